#!/usr/bin/env bash
# `make demo`: the admin console in one step, on throwaway services.
#
# Starts a throwaway Postgres and Redis on their own ports (scripts/services.sh, as `make test`
# does, but never the shared ones), the bundled mock provider, and the gateway in database mode on
# conf/database.example.toml. Then: migrates, bootstraps a super admin with a printed password,
# seeds an organisation with a provider on the mock, models, a team, an API key, a budget and some
# traffic (successes, a streamed answer, provider errors), and prints the console URL.
# Ctrl-C stops the gateway, the mock and the throwaway services.
#
#   DEMO_PG_PORT (55432), DEMO_REDIS_PORT (56379), MOCK_ADDR (127.0.0.1:9999), DEMO_PROXY_PORT
#   (8080), DEMO_ADMIN_PORT (9090): where they run.
#   DEMO_EMAIL (admin@demo.test): the super admin's e-mail.
#   WHARF_BIN, WHARF_MOCK_BIN: the binaries (default: target/release).
#   DEMO_OWN_MOCK=0: use a mock provider already listening on MOCK_ADDR (with DEMO_PROVIDER_KEY).
#   DEMO_EXIT=1: seed, print, then stop everything (for a test run).

set -euo pipefail
cd "$(dirname "$0")/.."

PG_PORT="${DEMO_PG_PORT:-55432}"
REDIS_PORT="${DEMO_REDIS_PORT:-56379}"
MOCK_ADDR="${MOCK_ADDR:-127.0.0.1:9999}"
EMAIL="${DEMO_EMAIL:-admin@demo.test}"
WHARF="${WHARF_BIN:-./target/release/wharf}"
MOCK="${WHARF_MOCK_BIN:-./target/release/wharf-mock}"
PROXY_PORT="${DEMO_PROXY_PORT:-8080}"
ADMIN_PORT="${DEMO_ADMIN_PORT:-9090}"
PROXY="http://127.0.0.1:$PROXY_PORT"
ADMIN="http://127.0.0.1:$ADMIN_PORT"
STATE="${TMPDIR:-/tmp}/wharf-demo-$(id -u)-$ADMIN_PORT"

say() { printf 'demo: %s\n' "$*" >&2; }
die() {
	printf 'demo: error: %s\n' "$*" >&2
	exit 1
}

for tool in curl python3; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"
done
OWN_MOCK="${DEMO_OWN_MOCK:-1}"
[ -x "$WHARF" ] || die "build first: make build (or set WHARF_BIN)"
[ "$OWN_MOCK" = 0 ] || [ -x "$MOCK" ] || die "build first: make build (or set WHARF_MOCK_BIN)"
ports=("$PROXY_PORT" "$ADMIN_PORT")
[ "$OWN_MOCK" = 0 ] || ports+=("${MOCK_ADDR##*:}")
for port in "${ports[@]}"; do
	if timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$port" 2>/dev/null; then
		die "port $port is taken (is \`make run\` or another demo running?)"
	fi
done
mkdir -p "$STATE"
# conf/database.example.toml, on the demo's ports, with its files in the demo's directory.
CONF="$STATE/wharf.toml"
sed -e "s|0.0.0.0:8080|127.0.0.1:$PROXY_PORT|" -e "s|127.0.0.1:9090|127.0.0.1:$ADMIN_PORT|" \
	-e "s|/tmp/wharf.pid|$STATE/wharf.pid|" -e "s|/tmp/wharf-upgrade.sock|$STATE/upgrade.sock|" \
	-e "s|/tmp/wharf-usage-spill.jsonl|$STATE/usage-spill.jsonl|" conf/database.example.toml >"$CONF"

export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/wharf_demo"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export WHARF_SERVICES_DIR="$STATE/services"

pids=()
cleanup() {
	trap - EXIT INT TERM
	# SIGINT: Pingora's fast shutdown (SIGTERM would wait out the grace period).
	for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	bash scripts/services.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A fresh database each run: stop what an earlier demo may have left, then start anew.
bash scripts/services.sh stop >/dev/null 2>&1 || true
bash scripts/services.sh
"$WHARF" migrate --database-url "$DATABASE_URL"

WHARF_MASTER_KEYS="$("$WHARF" secrets new-master-key --id demo 2>/dev/null)"
export WHARF_MASTER_KEYS
rand() { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20; }
export WHARF_INVALIDATION_SECRET="$(rand)"
export WHARF_OPERATOR_TOKEN="$(rand)"
PASSWORD="demo-$(rand)"
boot="$(WHARF_DEMO_PASSWORD="$PASSWORD" "$WHARF" admin bootstrap --email "$EMAIL" --password-env WHARF_DEMO_PASSWORD)"
TOKEN="$(sed -n 's/.*store it now): //p' <<<"$boot")"
[ -n "$TOKEN" ] || die "bootstrap printed no token: $boot"

"$WHARF" serve -c "$CONF" >"$STATE/wharf.log" 2>&1 &
pids+=($!)
if [ "$OWN_MOCK" != 0 ]; then
	"$MOCK" --listen "$MOCK_ADDR" >"$STATE/mock.log" 2>&1 &
	pids+=($!)
fi
for _ in $(seq 200); do
	code="$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/api/me" -H "Authorization: Bearer $TOKEN" || true)"
	[ "$code" = 200 ] && break
	sleep 0.1
done
[ "${code:-}" = 200 ] || die "the gateway did not come up (log: $STATE/wharf.log)"

# api METHOD PATH [JSON]: one admin API call; prints the answer, fails on an error status.
api() {
	local out code
	out="$(curl -s -w '\n%{http_code}' -X "$1" "$ADMIN$2" -H "Authorization: Bearer $TOKEN" \
		-H 'Content-Type: application/json' ${3:+-d "$3"})"
	code="${out##*$'\n'}"
	out="${out%$'\n'*}"
	case "$code" in 2*) printf '%s' "$out" ;; *) die "$1 $2 answered $code: $out" ;; esac
}
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

say "seeding an organisation, a provider on the mock, models, a team, a key, a budget"
ORG="$(api POST /api/admin/organisations '{"name":"Demo Org","slug":"demo"}' | field id)"
O="/api/organisations/$ORG"
PROV="$(api POST "$O/providers" "{\"name\":\"mock\",\"provider_type\":\"OPENAI\",\"base_url\":\"http://$MOCK_ADDR/v1\"}" | field id)"
api POST "$O/providers/$PROV/keys" "{\"name\":\"main\",\"secret\":\"${DEMO_PROVIDER_KEY:-sk-mock}\"}" >/dev/null
M1="$(api POST "$O/models" "{\"name\":\"gpt-4o-mini\",\"slug\":\"mock-gpt\",\"model_type\":\"chat\",\"provider_id\":\"$PROV\",\"input_price_nanos\":150000000,\"output_price_nanos\":600000000}" | field id)"
M2="$(api POST "$O/models" "{\"name\":\"gpt-4o\",\"slug\":\"mock-gpt-large\",\"model_type\":\"chat\",\"provider_id\":\"$PROV\",\"input_price_nanos\":2500000000,\"output_price_nanos\":10000000000}" | field id)"
M3="$(api POST "$O/models" "{\"name\":\"text-embedding-3-small\",\"slug\":\"mock-embed\",\"model_type\":\"embeddings\",\"provider_id\":\"$PROV\",\"input_price_nanos\":20000000}" | field id)"
TEAM="$(api POST "$O/teams" '{"name":"Platform team","description":"the demo team"}' | field id)"
KEY="$(api POST "$O/api-keys" "{\"name\":\"demo-key\",\"key_type\":\"TEAM\",\"team_id\":\"$TEAM\",\"models\":[\"$M1\",\"$M2\",\"$M3\"]}" | field key)"
api POST "$O/budgets" "{\"name\":\"team monthly\",\"scope\":\"TEAM\",\"scope_id\":\"$TEAM\",\"amount_nanos\":5000000000,\"period\":\"MONTHLY\",\"warning_thresholds\":[50,80]}" >/dev/null

say "sending some traffic through the gateway"
chat() { # chat MODEL [extra curl args]
	local model="$1"
	shift
	curl -s -o /dev/null "$PROXY/v1/chat/completions" -H "Authorization: Bearer $KEY" \
		-H 'Content-Type: application/json' "$@" \
		-d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello from the demo\"}]}" || true
}
for _ in $(seq 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' "$PROXY/v1/models" -H "Authorization: Bearer $KEY")" = 200 ] && break
	sleep 0.1
done
for i in $(seq 12); do chat gpt-4o-mini; done
for i in $(seq 5); do chat gpt-4o; done
curl -s -o /dev/null -N "$PROXY/v1/chat/completions" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' \
	-d '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Stream a greeting"}]}' || true
curl -s -o /dev/null "$PROXY/v1/embeddings" -H "Authorization: Bearer $KEY" \
	-H 'Content-Type: application/json' -d '{"model":"text-embedding-3-small","input":"the quick brown fox"}' || true
chat gpt-4o-mini -H 'x-mock-status: 500'
chat gpt-4o-mini -H 'x-mock-status: 429'
chat not-a-model

cat <<EOF

Wharf console demo
  Console:   $ADMIN/   (the organisation: $ADMIN/demo/dashboard)
  Sign in:   $EMAIL  /  $PASSWORD
  Gateway:   $PROXY/v1   virtual key: $KEY
  Try:       curl -s $PROXY/v1/chat/completions -H 'Authorization: Bearer $KEY' \\
               -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
  Logs:      $STATE/wharf.log
Ctrl-C stops the gateway, the mock provider and the throwaway Postgres and Redis.
EOF

if [ "${DEMO_EXIT:-0}" = 1 ]; then
	exit 0
fi
wait "${pids[0]}"
