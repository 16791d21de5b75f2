#!/usr/bin/env bash
# The official Python SDKs (openai, anthropic, google-genai) drive a real Wharf in front of
# wharf-mock, making the same calls their users make.
#
#   bash tests/sdk/run.sh [extra pytest arguments]
#
# Creates .venv-sdk/ at the repository root (once; reinstalls when requirements.txt changes),
# builds the debug binaries when they are missing, starts the mock and the gateway on free
# ports with a temporary configuration, runs pytest on tests/sdk and exits with its status.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SDK_DIR="$ROOT/tests/sdk"
VENV="$ROOT/.venv-sdk"
REQS="$SDK_DIR/requirements.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-python3}"

log() { printf 'sdk: %s\n' "$*" >&2; }

# --- Python environment --------------------------------------------------------------------

make_venv() {
    # A venv without pip (Debian's python3 without python3-venv) counts as unavailable.
    if "$PYTHON" -m venv "$VENV" 2>/dev/null && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$VENV"
    log "python3 -m venv is unavailable; using virtualenv"
    if ! "$PYTHON" -m virtualenv --version >/dev/null 2>&1; then
        "$PYTHON" -m pip install --user --quiet virtualenv
    fi
    "$PYTHON" -m virtualenv --quiet "$VENV"
}

if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    log "creating $VENV"
    make_venv
    # Keep the environment out of git whatever the repository's ignore rules say.
    printf '*\n' >"$VENV/.gitignore"
fi

want="$(sha256sum "$REQS" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    log "installing $(basename "$REQS")"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
    printf '%s\n' "$want" >"$STAMP"
fi

# --- Binaries ------------------------------------------------------------------------------

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WHARF="$TARGET_DIR/debug/wharf"
MOCK="$TARGET_DIR/debug/wharf-mock"
if [ ! -x "$WHARF" ] || [ ! -x "$MOCK" ]; then
    log "building wharf and wharf-mock"
    (cd "$ROOT" && cargo build -p wharf -p wharf-mock --bin wharf --bin wharf-mock)
fi

# --- Processes and cleanup -----------------------------------------------------------------

WORK="$(mktemp -d "${TMPDIR:-/tmp}/wharf-sdk.XXXXXX")"
MOCK_PID=""
GW_PID=""

stop() {
    local pid="$1"
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -s "$WORK/wharf.log" ]; then
        log "gateway log (last 30 lines):"
        tail -n 30 "$WORK/wharf.log" >&2 || true
    fi
    stop "$GW_PID"
    stop "$MOCK_PID"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# --- Mock provider -------------------------------------------------------------------------

PROVIDER_SECRET="sk-sdk-provider-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
VIRTUAL_KEY="wharf-sdk-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
VIRTUAL_KEY_HASH="$(printf %s "$VIRTUAL_KEY" | sha256sum | cut -d' ' -f1)"
KEY_ID="key_sdk"

MOCK_PORT="$(free_port)"
"$MOCK" --listen "127.0.0.1:$MOCK_PORT" --api-key "$PROVIDER_SECRET" \
    >"$WORK/mock.out" 2>"$WORK/mock.err" &
MOCK_PID=$!
for _ in $(seq 1 100); do
    grep -q '^wharf-mock listening on ' "$WORK/mock.out" 2>/dev/null && break
    kill -0 "$MOCK_PID" 2>/dev/null || { log "wharf-mock exited"; cat "$WORK/mock.err" >&2; exit 1; }
    sleep 0.1
done
grep -q '^wharf-mock listening on ' "$WORK/mock.out" || { log "wharf-mock did not start"; exit 1; }
MOCK_ADDR="$(sed -n 's/^wharf-mock listening on //p' "$WORK/mock.out" | head -n1)"

# --- Gateway -------------------------------------------------------------------------------

PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
CONFIG="$WORK/wharf.toml"
USAGE="$WORK/usage.jsonl"

cat >"$CONFIG" <<EOF
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
threads = 2
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 2
log_level = "info"
log_format = "json"
pid_file = "$WORK/wharf.pid"
upgrade_sock = "$WORK/upgrade.sock"

[usage]
path = "$USAGE"

[[providers]]
name = "openai"
type = "OPENAI"
base_url = "http://$MOCK_ADDR/v1"
api_key_env = "WHARF_SDK_PROVIDER_KEY"
timeout_ms = 10000
connect_timeout_ms = 2000

[[providers]]
name = "anthropic"
type = "ANTHROPIC"
base_url = "http://$MOCK_ADDR"
api_key_env = "WHARF_SDK_PROVIDER_KEY"
timeout_ms = 10000
connect_timeout_ms = 2000

[[providers]]
name = "google"
type = "GOOGLE"
base_url = "http://$MOCK_ADDR"
api_key_env = "WHARF_SDK_PROVIDER_KEY"
timeout_ms = 10000
connect_timeout_ms = 2000

[[models]]
name = "gpt-sdk"
slug = "gpt-sdk-upstream"
type = "chat"
provider = "openai"
pricing = { input = 0.15, output = 0.60 }

[[models]]
name = "embed-sdk"
slug = "embed-sdk-upstream"
type = "embeddings"
provider = "openai"
pricing = { input = 0.02 }

[[models]]
name = "claude-sdk"
slug = "claude-sdk-upstream"
type = "chat"
provider = "anthropic"
pricing = { input = 3.0, output = 15.0 }

[[models]]
name = "gemini-sdk"
slug = "gemini-sdk-upstream"
type = "chat"
provider = "google"
pricing = { input = 1.25, output = 5.0 }

[[keys]]
id = "$KEY_ID"
hash = "$VIRTUAL_KEY_HASH"
type = "TEAM"
organisation_id = "org_sdk"
team_id = "team_sdk"
models = ["gpt-sdk", "embed-sdk", "claude-sdk", "gemini-sdk"]
EOF

export WHARF_SDK_PROVIDER_KEY="$PROVIDER_SECRET"
"$WHARF" serve -c "$CONFIG" >"$WORK/wharf.out" 2>"$WORK/wharf.log" &
GW_PID=$!
healthy=""
for _ in $(seq 1 200); do
    if "$VENV/bin/python" - "$ADMIN_PORT" <<'PY' 2>/dev/null; then
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/health", timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
        healthy=1
        break
    fi
    kill -0 "$GW_PID" 2>/dev/null || { log "wharf exited"; cat "$WORK/wharf.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$healthy" ] || { log "wharf did not become healthy"; exit 1; }

# --- Tests ---------------------------------------------------------------------------------

export WHARF_URL="http://127.0.0.1:$PORT"
export WHARF_KEY="$VIRTUAL_KEY"
export WHARF_KEY_ID="$KEY_ID"
export WHARF_USAGE="$USAGE"
export WHARF_GATEWAY_LOG="$WORK/wharf.log"
export WHARF_UPSTREAM_CHAT="gpt-sdk-upstream"
export WHARF_UPSTREAM_CLAUDE="claude-sdk-upstream"
export WHARF_UPSTREAM_GEMINI="gemini-sdk-upstream"
# The SDKs must reach Wharf directly, and read no credentials or base URLs of their own.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"
unset OPENAI_BASE_URL OPENAI_API_KEY ANTHROPIC_BASE_URL ANTHROPIC_API_KEY ANTHROPIC_AUTH_TOKEN \
    GOOGLE_API_KEY GEMINI_API_KEY GOOGLE_GENAI_USE_VERTEXAI 2>/dev/null || true
export PYTHONDONTWRITEBYTECODE=1

set +e
(cd "$ROOT" && "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/sdk "$@")
status=$?
set -e
exit "$status"
