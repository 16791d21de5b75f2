#!/usr/bin/env bash
# Load benchmark driver (`make bench-load`).
#
# Starts the mock provider, a bare Pingora passthrough (the floor) and the
# Wharf gateway, then measures each of {direct mock, passthrough, wharf} x
# {unary, streaming} with the same load generator, and prints a Markdown
# table of throughput, latency, CPU per 1,000 requests and peak RSS, plus
# Wharf's idle RSS and memory per open stream.
#
# Environment knobs:
#   CONCURRENCY      connections per run                    (default 32)
#   DURATION         measured seconds per run               (default 10)
#   WARMUP           warm-up seconds before each run        (default 2)
#   TOKENS           tokens per mock response               (default 16)
#   HOLD             concurrent slow streams for memory run (default 1000)
#   LOADGEN_THREADS  load generator threads                 (default: by core count)
#   NO_BUILD=1       skip `cargo build`
#   BENCH_DB=0       skip the database-mode rows (default: on when Postgres answers at
#                    DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test; the
#                    benchmark creates and drops a database `wharf_bench` there)
#   BENCH_GOV=0      skip the governed rows (default: on when Redis answers; without
#                    REDIS_URL the benchmark starts its own redis-server on port 18379 and
#                    reports its CPU, commands and round trips per request): rate limits in
#                    Redis plus a budget and a quota on the key (benches/bench-gov.toml),
#                    against the `wharf` rows
#   PIN_SERVICES=1   also pin the local Postgres and Redis servers to the mock's cores for the
#                    run (restored to every core at exit), so that the database-mode and
#                    governed rows do not share the proxy's core with them
#   MOCK_BIN, WHARF_BIN, PT_BIN, LOADGEN  override binary paths
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
TOKENS=${TOKENS:-16}
HOLD=${HOLD:-1000}

MOCK_HOST=127.0.0.1 MOCK_PORT=18080
PT_HOST=127.0.0.1 PT_PORT=18081
WHARF_HOST=127.0.0.1 WHARF_PORT=18082
WHARF_DB_PORT=18083 WHARF_DB_ADMIN_PORT=18093
WHARF_GOV_PORT=18084 WHARF_GOV_ADMIN_PORT=18094
ADMIN_HOST=127.0.0.1 ADMIN_PORT=18092
CHAT_PATH=/v1/chat/completions

OUT_DIR=target/bench-load
mkdir -p "$OUT_DIR"

MOCK_BIN=${MOCK_BIN:-target/release/wharf-mock}
WHARF_BIN=${WHARF_BIN:-target/release/wharf}
PT_BIN=${PT_BIN:-target/release/examples/passthrough}
LOADGEN=${LOADGEN:-target/release/examples/loadgen}

export WHARF_BENCH_PROVIDER_KEY=sk-mock

log() { printf '[bench-load] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------
# Process management
# ---------------------------------------------------------------------------

PIDS=()
SERVICES_PINNED=0
# Local Postgres and Redis server processes (new Postgres backends inherit the postmaster's
# affinity).
service_pids() { pgrep -x 'postgres|redis-server' || true; }
cleanup() {
    local pid
    if ((SERVICES_PINNED)); then
        for pid in $(service_pids); do
            taskset -a -cp "0-$(($(nproc) - 1))" "$pid" >/dev/null 2>&1 || true
        done
    fi
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        local i
        for i in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Raise the open-file limit as far as allowed (1,000 held streams need
# about 3,000 descriptors across the processes).
raise_nofile() {
    local hard
    hard=$(ulimit -Hn)
    if [[ $hard == unlimited ]]; then
        ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true
    else
        ulimit -n "$hard" 2>/dev/null || true
    fi
    log "open-file limit: $(ulimit -n)"
}
raise_nofile

# CPU placement: the proxy under test gets a core of its own, the mock
# another, the load generator the rest. Without taskset or with fewer than
# two cores nothing is pinned.
NCPU=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || echo 1)
PROXY_CPUS="" MOCK_CPUS="" LG_CPUS=""
if command -v taskset >/dev/null 2>&1 && ((NCPU >= 2)); then
    PROXY_CPUS=0
    if ((NCPU == 2)); then
        MOCK_CPUS=1 LG_CPUS=1
    elif ((NCPU == 3)); then
        MOCK_CPUS=1 LG_CPUS=2
    else
        MOCK_CPUS=1 LG_CPUS="2-$((NCPU - 1))"
    fi
fi
if [[ -z ${LOADGEN_THREADS:-} ]]; then
    if ((NCPU >= 4)); then
        LOADGEN_THREADS=$((NCPU - 2))
        ((LOADGEN_THREADS > 4)) && LOADGEN_THREADS=4
    else
        LOADGEN_THREADS=1
    fi
fi
log "cores: $NCPU; pinning proxy=[${PROXY_CPUS:-any}] mock=[${MOCK_CPUS:-any}] loadgen=[${LG_CPUS:-any}] x$LOADGEN_THREADS threads"
if [[ ${PIN_SERVICES:-0} == 1 && -n $MOCK_CPUS ]]; then
    SERVICES_PINNED=1
    for pid in $(service_pids); do
        taskset -a -cp "$MOCK_CPUS" "$pid" >/dev/null 2>&1 || true
    done
    log "pinned local Postgres and Redis to [$MOCK_CPUS] for this run"
fi

# pin CPUS CMD...: runs CMD in the foreground, pinned to CPUS when set.
pin() {
    local cpus=$1
    shift
    if [[ -n $cpus ]]; then
        taskset -c "$cpus" "$@"
    else
        "$@"
    fi
}

# spawn CPUS CMD...: for starting a server in the background with
# `spawn ... &`. It execs, so `$!` is the PID of CMD itself.
spawn() {
    local cpus=$1
    shift
    if [[ -n $cpus ]]; then
        exec taskset -c "$cpus" "$@"
    else
        exec "$@"
    fi
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# http_status HOST PORT PATH: prints the status code of a GET (000 if none).
http_status() {
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$1:$2$3" 2>/dev/null || true
    else
        (
            exec 3<>"/dev/tcp/$1/$2" || exit 0
            printf 'GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$3" "$1" "$2" >&3
            IFS=' ' read -r -t 2 _ code _ <&3 || true
            printf '%s' "${code:-000}"
        ) 2>/dev/null || true
    fi
}

# wait_until SECONDS PID DESC CMD...: polls CMD until it succeeds; fails if
# PID exits or time runs out.
wait_until() {
    local secs=$1 pid=$2 desc=$3
    shift 3
    local deadline=$((SECONDS + secs))
    until "$@"; do
        kill -0 "$pid" 2>/dev/null || return 1
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
    log "$desc ready (pid $pid)"
}

log_has() { grep -q "$2" "$1" 2>/dev/null; }
health_ok() { [[ $(http_status "$ADMIN_HOST" "$ADMIN_PORT" /v1/health) == 200 ]]; }

# /proc readings ------------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

# cpu_ticks PID: utime + stime of the whole process, in clock ticks.
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || {
        echo 0
        return
    }
    # Fields after "pid (comm) ": state is $1, utime $12, stime $13.
    awk '{print $12 + $13}' <<<"${stat##*) }"
}

# status_kb PID FIELD: a kB value from /proc/PID/status (0 if missing).
status_kb() {
    if [[ -r /proc/$1/status ]]; then
        awk -v f="$2:" '$1 == f {v = $2} END {print v + 0}' "/proc/$1/status"
    else
        echo 0
    fi
}

# Resets VmHWM to the current RSS so each run reports its own peak.
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }

# jget JSON KEY: a scalar from loadgen's one-line JSON output.
jget() {
    local v
    v=$(sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1")
    v=${v//\"/}
    [[ -z $v || $v == null ]] && v=""
    printf '%s' "$v"
}

calc() { awk "BEGIN { printf \"%s\", $* }"; }

# ---------------------------------------------------------------------------
# Build and start
# ---------------------------------------------------------------------------

if [[ -z ${NO_BUILD:-} ]]; then
    log "building release binaries"
    cargo build --release --workspace --bins --examples
fi
for b in "$MOCK_BIN" "$WHARF_BIN" "$PT_BIN" "$LOADGEN"; do
    [[ -x $b ]] || die "missing binary $b"
done

for p in "$MOCK_PORT" "$PT_PORT" "$WHARF_PORT" "$ADMIN_PORT"; do
    if port_open 127.0.0.1 "$p"; then
        die "port $p is already in use"
    fi
done

log "starting mock provider on $MOCK_HOST:$MOCK_PORT"
spawn "$MOCK_CPUS" "$MOCK_BIN" --listen "$MOCK_HOST:$MOCK_PORT" >"$OUT_DIR/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_until 30 "$MOCK_PID" "mock" log_has "$OUT_DIR/mock.log" "wharf-mock listening on" ||
    die "mock did not start; see $OUT_DIR/mock.log"

log "starting passthrough on $PT_HOST:$PT_PORT"
spawn "$PROXY_CPUS" "$PT_BIN" --listen "$PT_HOST:$PT_PORT" --upstream "$MOCK_HOST:$MOCK_PORT" \
    --threads 1 >"$OUT_DIR/passthrough.log" 2>&1 &
PT_PID=$!
PIDS+=("$PT_PID")
wait_until 30 "$PT_PID" "passthrough" port_open "$PT_HOST" "$PT_PORT" ||
    die "passthrough did not start; see $OUT_DIR/passthrough.log"

log "starting wharf on $WHARF_HOST:$WHARF_PORT (admin $ADMIN_HOST:$ADMIN_PORT)"
rm -f target/bench-usage.jsonl
spawn "$PROXY_CPUS" "$WHARF_BIN" serve -c benches/bench.toml >"$OUT_DIR/wharf.log" 2>&1 &
WHARF_PID=$!
PIDS+=("$WHARF_PID")
WHARF_OK=1
if ! wait_until 60 "$WHARF_PID" "wharf" health_ok; then
    log "warning: wharf did not become healthy; its rows are skipped (see $OUT_DIR/wharf.log)"
    WHARF_OK=0
fi
# Database mode: the same catalog and key in Postgres, served from the in-process caches.
WHARF_DB_OK=0
DB_KEY=""
ADMIN_DB_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
BENCH_DB_URL="${ADMIN_DB_URL%/*}/wharf_bench"
if [[ ${BENCH_DB:-1} != 0 ]] && ((WHARF_OK)) && command -v psql >/dev/null &&
    psql "$ADMIN_DB_URL" -qc "SELECT 1" >/dev/null 2>&1; then
    psql "$ADMIN_DB_URL" -qc "DROP DATABASE IF EXISTS wharf_bench" >/dev/null 2>&1 || true
    psql "$ADMIN_DB_URL" -qc "CREATE DATABASE wharf_bench" >/dev/null
    export WHARF_MASTER_KEYS="k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    export WHARF_BENCH_DATABASE_URL="$BENCH_DB_URL"
    DB_KEY=$(target/release/examples/seed_db "$BENCH_DB_URL" 2>>"$OUT_DIR/seed.log" || true)
    if [[ -n $DB_KEY ]]; then
        log "starting database-mode wharf on $WHARF_HOST:$WHARF_DB_PORT"
        spawn "$PROXY_CPUS" "$WHARF_BIN" serve -c benches/bench-db.toml >"$OUT_DIR/wharf-db.log" 2>&1 &
        WHARF_DB_PID=$!
        PIDS+=("$WHARF_DB_PID")
        db_health_ok() { [[ $(http_status "$ADMIN_HOST" "$WHARF_DB_ADMIN_PORT" /v1/health) == 200 ]]; }
        if wait_until 60 "$WHARF_DB_PID" "wharf-db" db_health_ok; then
            WHARF_DB_OK=1
        else
            log "warning: database-mode wharf did not start (see $OUT_DIR/wharf-db.log)"
        fi
    else
        log "warning: could not seed the benchmark database (see $OUT_DIR/seed.log)"
    fi
fi

# Governed: rate limits shared through Redis, a budget and a quota on the key. Unless
# REDIS_URL names a server, the benchmark starts its own redis-server (port 18379, nothing
# persisted), so that its CPU and its command counts are the governed gateway's alone.
WHARF_GOV_OK=0
REDIS_PID=""
REDIS_BENCH_PORT=18379
if [[ -z ${REDIS_URL:-} && ${BENCH_GOV:-1} != 0 ]] && ((WHARF_OK)) && command -v redis-server >/dev/null; then
    port_open 127.0.0.1 "$REDIS_BENCH_PORT" && die "port $REDIS_BENCH_PORT is already in use"
    log "starting redis-server on 127.0.0.1:$REDIS_BENCH_PORT"
    spawn "$MOCK_CPUS" redis-server --port "$REDIS_BENCH_PORT" --bind 127.0.0.1 --save "" \
        --appendonly no >"$OUT_DIR/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_until 10 "$REDIS_PID" "redis" port_open 127.0.0.1 "$REDIS_BENCH_PORT" ||
        log "warning: redis-server did not start (see $OUT_DIR/redis.log)"
    BENCH_REDIS_URL=redis://127.0.0.1:$REDIS_BENCH_PORT
else
    BENCH_REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
fi
# redis_stats: "commands round-trips" so far from INFO commandstats of the benchmark's own
# Redis: every command (those a script runs included; the readings' own INFO left out), and
# the commands a client sent (scripts, script loads, pings).
redis_stats() {
    if [[ -z $REDIS_PID ]]; then
        echo "0 0"
        return
    fi
    redis-cli -p "$REDIS_BENCH_PORT" INFO commandstats 2>/dev/null | tr -d '\r' | awk -F'[:=,]' '
        /^cmdstat_/ {
            name = substr($1, 9)
            if (name == "info" || name == "command") next
            all += $3
            if (name ~ /^(evalsha|eval|ping|script)/) rt += $3
        }
        END { print all + 0, rt + 0 }'
}
# redis_mark / redis_record KEY COMPLETED: Redis CPU (utime + stime of redis-server),
# commands and round trips per request of one measured run.
redis_mark() {
    REDIS_T0=$(cpu_ticks "$REDIS_PID")
    read -r REDIS_C0 REDIS_RT0 <<<"$(redis_stats)"
}
redis_record() {
    local t1 c1 rt1
    t1=$(cpu_ticks "$REDIS_PID")
    read -r c1 rt1 <<<"$(redis_stats)"
    if [[ -n $REDIS_PID && -n $2 && $2 -gt 0 ]]; then
        R[rcpu|$1]=$(calc "($t1 - $REDIS_T0) / $CLK_TCK / $2 * 1000")
        R[rcmd|$1]=$(calc "sprintf(\"%.3f\", ($c1 - $REDIS_C0) / $2)")
        R[rrt|$1]=$(calc "sprintf(\"%.4f\", ($rt1 - $REDIS_RT0) / $2)")
    fi
}
redis_answers() {
    local hp=${BENCH_REDIS_URL#redis://}
    hp=${hp##*@}
    hp=${hp%%/*}
    (
        exec 3<>"/dev/tcp/${hp%%:*}/${hp##*:}" || exit 1
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 line <&3 && [[ $line == +PONG* ]]
    ) 2>/dev/null
}
if [[ ${BENCH_GOV:-1} != 0 ]] && ((WHARF_OK)) && redis_answers; then
    export WHARF_BENCH_REDIS_URL="$BENCH_REDIS_URL"
    log "starting governed wharf on $WHARF_HOST:$WHARF_GOV_PORT"
    rm -f target/bench-gov-usage.jsonl
    spawn "$PROXY_CPUS" "$WHARF_BIN" serve -c benches/bench-gov.toml >"$OUT_DIR/wharf-gov.log" 2>&1 &
    WHARF_GOV_PID=$!
    PIDS+=("$WHARF_GOV_PID")
    gov_health_ok() { [[ $(http_status "$ADMIN_HOST" "$WHARF_GOV_ADMIN_PORT" /v1/health) == 200 ]]; }
    if wait_until 60 "$WHARF_GOV_PID" "wharf-gov" gov_health_ok; then
        WHARF_GOV_OK=1
    else
        log "warning: governed wharf did not start (see $OUT_DIR/wharf-gov.log)"
    fi
fi

WHARF_IDLE_RSS_KB=""
if ((WHARF_OK)); then
    sleep 0.5
    WHARF_IDLE_RSS_KB=$(status_kb "$WHARF_PID" VmRSS)
    log "wharf idle RSS: ${WHARF_IDLE_RSS_KB} kB"
fi

# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------

declare -A R # results, keyed "field|path|mode|load"
ROWS=()      # "path|mode|load" in print order

url_of() {
    case $1 in
    mock) echo "http://$MOCK_HOST:$MOCK_PORT$CHAT_PATH" ;;
    passthrough) echo "http://$PT_HOST:$PT_PORT$CHAT_PATH" ;;
    wharf | wharf-failover20 | wharf-filters) echo "http://$WHARF_HOST:$WHARF_PORT$CHAT_PATH" ;;
    wharf-db) echo "http://$WHARF_HOST:$WHARF_DB_PORT$CHAT_PATH" ;;
    wharf-gov) echo "http://$WHARF_HOST:$WHARF_GOV_PORT$CHAT_PATH" ;;
    mock-anthropic) echo "http://$MOCK_HOST:$MOCK_PORT/v1/messages" ;;
    passthrough-anthropic) echo "http://$PT_HOST:$PT_PORT/v1/messages" ;;
    wharf-anthropic) echo "http://$WHARF_HOST:$WHARF_PORT/v1/messages" ;;
    wharf-unified-anthropic) echo "http://$WHARF_HOST:$WHARF_PORT/v1/llm/chat" ;;
    esac
}
pid_of() {
    case $1 in
    mock*) echo "$MOCK_PID" ;;
    passthrough*) echo "$PT_PID" ;;
    wharf-db) echo "$WHARF_DB_PID" ;;
    wharf-gov) echo "$WHARF_GOV_PID" ;;
    wharf*) echo "$WHARF_PID" ;;
    esac
}

ANTHROPIC_BODY='{"model":"%s","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Say hello"}]}'
UNIFIED_BODY='{"model":"%s","stream":true,"messages":[{"role":"user","content":"Say hello"}]}'

# lg PATH MODE ARGS...: runs loadgen against PATH in MODE, JSON to stdout.
lg() {
    local path=$1 mode=$2
    shift 2
    local -a a=(--url "$(url_of "$path")" --json --threads "$LOADGEN_THREADS"
        -H "x-mock-tokens: $TOKENS" -H "x-mock-ttft-ms: 0" -H "x-mock-itl-ms: 0")
    case $path in
    wharf) a+=(-H "authorization: Bearer wharf-bench-key" --model bench-model) ;;
    wharf-failover20) a+=(-H "authorization: Bearer wharf-bench-key" --model bench-failover) ;;
    wharf-filters) a+=(-H "authorization: Bearer wharf-bench-key" --model bench-filtered) ;;
    wharf-db) a+=(-H "authorization: Bearer $DB_KEY" --model bench-model) ;;
    wharf-gov) a+=(-H "authorization: Bearer wharf-bench-gov-key" --model bench-model) ;;
    mock | passthrough) a+=(-H "authorization: Bearer sk-mock" --model mock-gpt) ;;
    mock-anthropic | passthrough-anthropic)
        # shellcheck disable=SC2059
        a+=(-H "x-api-key: sk-mock" -H "anthropic-version: 2023-06-01"
            --body "$(printf "$ANTHROPIC_BODY" claude-mock)") ;;
    wharf-anthropic)
        # shellcheck disable=SC2059
        a+=(-H "x-api-key: wharf-bench-key" --body "$(printf "$ANTHROPIC_BODY" bench-claude)") ;;
    wharf-unified-anthropic)
        # shellcheck disable=SC2059
        a+=(-H "authorization: Bearer wharf-bench-key" --body "$(printf "$UNIFIED_BODY" bench-claude)") ;;
    esac
    [[ $mode == stream ]] && a+=(--stream)
    pin "$LG_CPUS" "$LOADGEN" "${a[@]}" "$@" 2>>"$OUT_DIR/loadgen.log" || true
}

# measure PATH MODE [RATE]: warm-up, then one measured run; records results.
measure() {
    local path=$1 mode=$2 rate=${3:-}
    local pid load out
    pid=$(pid_of "$path")
    load="c=$CONCURRENCY"
    local -a extra=()
    if [[ -n $rate ]]; then
        load="rate=$rate"
        extra=(--rate "$rate")
    fi
    log "run: $path $mode $load"
    lg "$path" "$mode" --concurrency "$CONCURRENCY" --warmup 0 --duration "$WARMUP" >/dev/null
    reset_hwm "$pid"
    local c0 c1
    if [[ $path == wharf-gov ]]; then redis_mark; fi
    c0=$(cpu_ticks "$pid")
    out=$(lg "$path" "$mode" --concurrency "$CONCURRENCY" --warmup 0 --duration "$DURATION" \
        "${extra[@]+"${extra[@]}"}")
    c1=$(cpu_ticks "$pid")
    echo "$path $mode $load $out" >>"$OUT_DIR/results.jsonl"

    local key="$path|$mode|$load"
    ROWS+=("$key")
    local completed errors
    completed=$(jget "$out" completed)
    errors=$(jget "$out" errors)
    R[rps|$key]=$(jget "$out" rps)
    R[p50|$key]=$(jget "$out" lat_p50_us)
    R[p99|$key]=$(jget "$out" lat_p99_us)
    R[ttfb50|$key]=$(jget "$out" ttfb_p50_us)
    R[errors|$key]=${errors:-?}
    R[hwm|$key]=$(status_kb "$pid" VmHWM)
    if [[ -n $completed && $completed -gt 0 ]]; then
        R[cpu|$key]=$(calc "($c1 - $c0) / $CLK_TCK / $completed * 1000")
    else
        R[cpu|$key]=""
    fi
    if [[ $path == wharf-gov ]]; then redis_record "$key" "${completed:-0}"; fi
    if [[ -n ${errors:-} && $errors != 0 ]]; then
        log "warning: $path $mode $load: $errors errors (first: $(jget "$out" first_error))"
    fi
    log "  -> ${R[rps|$key]:-?} req/s, p50 ${R[p50|$key]:-?} us, p99 ${R[p99|$key]:-?} us, errors ${R[errors|$key]}"
}

: >"$OUT_DIR/results.jsonl"
: >"$OUT_DIR/loadgen.log"

PATHS=(mock passthrough)
((WHARF_OK)) && PATHS+=(wharf)
((WHARF_DB_OK)) && PATHS+=(wharf-db)
((WHARF_GOV_OK)) && PATHS+=(wharf-gov)

for mode in unary stream; do
    for path in "${PATHS[@]}"; do
        measure "$path" "$mode"
    done
done

# Governance at c=1: the latency a governed request adds on an idle gateway.
if ((WHARF_GOV_OK)); then
    CONCURRENCY=1 measure wharf unary
    CONCURRENCY=1 measure wharf-gov unary
fi

# Anthropic-native streaming: direct, bare passthrough, Wharf's /v1/messages and (when the
# gateway serves it) the unified endpoint translating to Anthropic. TTFB p50 shows the time Wharf
# adds before the first byte.
ANTH_PATHS=(mock-anthropic passthrough-anthropic)
if ((WHARF_OK)); then
    ANTH_PATHS+=(wharf-anthropic)
    [[ $(http_status "$WHARF_HOST" "$WHARF_PORT" /v1/llm/chat) != 404 ]] && ANTH_PATHS+=(wharf-unified-anthropic)
fi
for path in "${ANTH_PATHS[@]}"; do
    measure "$path" stream
done

# Failover: 20% of first attempts answer 503 and fail over to a healthy deployment. Compare with
# the `wharf` rows of the same invocation.
if ((WHARF_OK)); then
    for mode in unary stream; do
        measure wharf-failover20 "$mode"
    done
    # SafetySec + one Lua filter on the request and on every answer event.
    for mode in unary stream; do
        measure wharf-filters "$mode"
    done
fi

# Latency at half of the passthrough's maximum throughput (open loop).
for mode in unary stream; do
    max=${R[rps|passthrough|$mode|c=$CONCURRENCY]:-}
    [[ -z $max ]] && continue
    half=$(calc "int($max / 2)")
    ((half > 0)) || continue
    for path in "${PATHS[@]}"; do
        measure "$path" "$mode" "$half"
    done
done

# Memory per open stream through wharf.
HOLD_OUT=""
if ((WHARF_OK)); then
    log "hold: $HOLD concurrent slow streams through wharf"
    HOLD_OUT=$(pin "$LG_CPUS" "$LOADGEN" --url "$(url_of wharf)" --json --threads "$LOADGEN_THREADS" \
        --stream --hold "$HOLD" --pid "$WHARF_PID" --timeout 120 --model bench-model \
        -H "authorization: Bearer wharf-bench-key" \
        -H "x-mock-tokens: 50" -H "x-mock-itl-ms: 100" -H "x-mock-ttft-ms: 0" \
        2>>"$OUT_DIR/loadgen.log" || true)
    echo "wharf hold $HOLD $HOLD_OUT" >>"$OUT_DIR/results.jsonl"
fi

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

fmt() { [[ -n ${1:-} ]] && printf '%s' "$1" || printf '—'; }

report() {
    echo "## Load benchmark"
    echo
    echo "Concurrency $CONCURRENCY, ${DURATION} s per run after ${WARMUP} s warm-up, $TOKENS tokens per response;"
    echo "$NCPU cores (proxy=[${PROXY_CPUS:-any}] mock=[${MOCK_CPUS:-any}] loadgen=[${LG_CPUS:-any}]); proxies run 1 worker thread."
    echo "CPU and peak RSS are those of the process serving the path (the mock itself for \`mock\`)."
    echo
    echo "| path | mode | load | req/s | p50 µs | p99 µs | TTFB p50 µs | added p50/p99 vs passthrough µs | CPU s/1k req | peak RSS MB | errors |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    local key path mode load added hwm
    for key in "${ROWS[@]}"; do
        IFS='|' read -r path mode load <<<"$key"
        added="—"
        if [[ $path == wharf ]]; then
            local pk="passthrough|$mode|$load"
            local w50=${R[p50|$key]:-} w99=${R[p99|$key]:-} p50=${R[p50|$pk]:-} p99=${R[p99|$pk]:-}
            if [[ -n $w50 && -n $w99 && -n $p50 && -n $p99 ]]; then
                added="$((w50 - p50)) / $((w99 - p99))"
            fi
        fi
        hwm=""
        [[ -n ${R[hwm|$key]:-} && ${R[hwm|$key]} != 0 ]] && hwm=$(calc "sprintf(\"%.1f\", ${R[hwm|$key]} / 1024)")
        local cpu=""
        [[ -n ${R[cpu|$key]:-} ]] && cpu=$(calc "sprintf(\"%.3f\", ${R[cpu|$key]})")
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
            "$path" "$mode" "$load" "$(fmt "${R[rps|$key]:-}")" "$(fmt "${R[p50|$key]:-}")" \
            "$(fmt "${R[p99|$key]:-}")" "$(fmt "${R[ttfb50|$key]:-}")" "$added" "$(fmt "$cpu")" "$(fmt "$hwm")" "$(fmt "${R[errors|$key]:-}")"
    done
    echo
    local m
    for m in unary stream; do
        local w=${R[rps|wharf|$m|c=$CONCURRENCY]:-} p=${R[rps|passthrough|$m|c=$CONCURRENCY]:-}
        if [[ -n $w && -n $p ]] && [[ $(calc "($p > 0)") == 1 ]]; then
            echo "- Throughput wharf/passthrough ($m): $(calc "sprintf(\"%.2f\", $w / $p)")"
        else
            echo "- Throughput wharf/passthrough ($m): n/a"
        fi
    done
    for m in unary stream; do
        local d=${R[rps|wharf-db|$m|c=$CONCURRENCY]:-} f=${R[rps|wharf|$m|c=$CONCURRENCY]:-}
        if [[ -n $d && -n $f ]] && [[ $(calc "($f > 0)") == 1 ]]; then
            echo "- Throughput database mode / file mode ($m): $(calc "sprintf(\"%.2f\", $d / $f)")"
        fi
        d=${R[rps|wharf-gov|$m|c=$CONCURRENCY]:-}
        if [[ -n $d && -n $f ]] && [[ $(calc "($f > 0)") == 1 ]]; then
            echo "- Throughput with limits + budget (Redis) / without ($m): $(calc "sprintf(\"%.2f\", $d / $f)"), p50 ${R[p50|wharf-gov|$m|c=$CONCURRENCY]:-?} vs ${R[p50|wharf|$m|c=$CONCURRENCY]:-?} µs, p99 ${R[p99|wharf-gov|$m|c=$CONCURRENCY]:-?} vs ${R[p99|wharf|$m|c=$CONCURRENCY]:-?} µs"
        fi
        local gk="wharf-gov|$m|c=$CONCURRENCY" wk="wharf|$m|c=$CONCURRENCY"
        if [[ -n ${R[rcpu|$gk]:-} && -n ${R[cpu|$gk]:-} && -n ${R[cpu|$wk]:-} ]]; then
            echo "- Governed CPU per request ($m): gateway $(calc "sprintf(\"%.1f\", ${R[cpu|$gk]} * 1000)") µs + Redis $(calc "sprintf(\"%.1f\", ${R[rcpu|$gk]} * 1000)") µs vs ungoverned gateway $(calc "sprintf(\"%.1f\", ${R[cpu|$wk]} * 1000)") µs: $(calc "sprintf(\"%.2f\", (${R[cpu|$gk]} + ${R[rcpu|$gk]}) / ${R[cpu|$wk]})")×; Redis commands ${R[rcmd|$gk]} and round trips ${R[rrt|$gk]} per request"
        fi
        d=${R[rps|wharf-failover20|$m|c=$CONCURRENCY]:-}
        if [[ -n $d && -n $f ]] && [[ $(calc "($f > 0)") == 1 ]]; then
            echo "- Throughput with 20% of first attempts failing over / without ($m): $(calc "sprintf(\"%.2f\", $d / $f)"), p99 ${R[p99|wharf-failover20|$m|c=$CONCURRENCY]:-?} vs ${R[p99|wharf|$m|c=$CONCURRENCY]:-?} µs"
        fi
        d=${R[rps|wharf-filters|$m|c=$CONCURRENCY]:-}
        if [[ -n $d && -n $f ]] && [[ $(calc "($f > 0)") == 1 ]]; then
            echo "- Throughput with SafetySec + one Lua filter / without ($m): $(calc "sprintf(\"%.2f\", $d / $f)"), p99 ${R[p99|wharf-filters|$m|c=$CONCURRENCY]:-?} vs ${R[p99|wharf|$m|c=$CONCURRENCY]:-?} µs"
        fi
    done
    local g1=${R[p50|wharf-gov|unary|c=1]:-} w1=${R[p50|wharf|unary|c=1]:-}
    if [[ -n $g1 && -n $w1 ]]; then
        echo "- Added p50 of governance at c=1 (unary): $((g1 - w1)) µs ($g1 vs $w1 µs)"
    fi
    if [[ -n $WHARF_IDLE_RSS_KB ]]; then
        echo "- Wharf idle RSS after start: $(calc "sprintf(\"%.1f\", $WHARF_IDLE_RSS_KB / 1024)") MB"
    else
        echo "- Wharf idle RSS after start: n/a"
    fi
    if [[ -n $HOLD_OUT ]]; then
        local before during open kb
        before=$(jget "$HOLD_OUT" rss_before_kb)
        during=$(jget "$HOLD_OUT" rss_during_kb)
        open=$(jget "$HOLD_OUT" open_at_sample)
        if [[ -n $before && -n $during && -n $open && $open -gt 0 ]]; then
            kb=$(calc "sprintf(\"%.1f\", ($during - $before) / $open)")
            echo "- Wharf memory per open stream: $kb KB ($open of $HOLD streams open at once; RSS $before → $during kB)"
        else
            echo "- Wharf memory per open stream: n/a (open at once: $(fmt "$open") of $HOLD; first error: $(fmt "$(jget "$HOLD_OUT" first_error)"))"
        fi
    else
        echo "- Wharf memory per open stream: n/a"
    fi
}

report | tee "$OUT_DIR/report.md"
if ((WHARF_DB_OK)); then
    kill -TERM "$WHARF_DB_PID" 2>/dev/null || true
    sleep 1
    psql "$ADMIN_DB_URL" -qc "DROP DATABASE IF EXISTS wharf_bench WITH (FORCE)" >/dev/null 2>&1 || true
fi
log "raw results in $OUT_DIR/results.jsonl, report in $OUT_DIR/report.md"
