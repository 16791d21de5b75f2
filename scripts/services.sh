#!/usr/bin/env bash
# Makes sure the Postgres and Redis the tests use answer (used by `make test`).
#
#   scripts/services.sh          check both; start a throwaway instance of each that does not answer
#   scripts/services.sh stop     stop the throwaway instances this script started on those ports
#
# Where: Postgres from DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), Redis from
# REDIS_URL (default redis://127.0.0.1:6379). WHARF_PG_HOST, WHARF_PG_PORT, WHARF_REDIS_HOST and
# WHARF_REDIS_PORT override the host and port taken from those URLs.
#
# A service that already answers is left alone. For one that does not, on this machine only
# (127.0.0.1, localhost, ::1), the script installs the OS package when its binaries are missing
# (apt-get or dnf; sudo when not root) and starts a throwaway instance:
#   Postgres: initdb into a temporary directory with trust auth, pg_ctl start on the port with
#             the unix socket in that directory (as the `postgres` user when run as root, since
#             initdb refuses root), then the URL's role and database are created;
#   Redis:    redis-server --save "" --appendonly no --daemonize yes on the port.
# Their files live under WHARF_SERVICES_DIR (default ${TMPDIR:-/tmp}/wharf-services-<uid>).
# Exits non-zero with a message saying what is wrong when a service cannot be made to answer.

set -uo pipefail

log() { printf 'services: %s\n' "$*" >&2; }
die() {
	printf 'services: error: %s\n' "$*" >&2
	exit 1
}

DATABASE_URL_EFFECTIVE="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
REDIS_URL_EFFECTIVE="${REDIS_URL:-redis://127.0.0.1:6379}"
STATE_DIR="${WHARF_SERVICES_DIR:-${TMPDIR:-/tmp}/wharf-services-$(id -u)}"

# as_root COMMAND...: runs COMMAND as root (through sudo when not root).
as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# parse_url URL DEFAULT_PORT: sets URL_USER URL_PASSWORD URL_HOST URL_PORT URL_DB.
parse_url() {
	local rest="${1#*://}" default_port="$2" hostport userinfo
	rest="${rest%%\?*}"
	URL_USER=""
	URL_PASSWORD=""
	if [[ "$rest" == *@* ]]; then
		userinfo="${rest%@*}"
		URL_USER="${userinfo%%:*}"
		[[ "$userinfo" == *:* ]] && URL_PASSWORD="${userinfo#*:}"
		rest="${rest##*@}"
	fi
	hostport="${rest%%/*}"
	URL_DB=""
	[[ "$rest" == */* ]] && URL_DB="${rest#*/}"
	if [[ "$hostport" == \[* ]]; then
		URL_HOST="${hostport#\[}"
		URL_HOST="${URL_HOST%%\]*}"
		URL_PORT="${hostport##*\]}"
		URL_PORT="${URL_PORT#:}"
	elif [[ "$hostport" == *:* ]]; then
		URL_HOST="${hostport%%:*}"
		URL_PORT="${hostport##*:}"
	else
		URL_HOST="$hostport"
		URL_PORT=""
	fi
	[ -n "$URL_HOST" ] || URL_HOST=127.0.0.1
	[ -n "$URL_PORT" ] || URL_PORT="$default_port"
}

parse_url "$DATABASE_URL_EFFECTIVE" 5432
PG_HOST="${WHARF_PG_HOST:-$URL_HOST}"
PG_PORT="${WHARF_PG_PORT:-$URL_PORT}"
PG_USER="${URL_USER:-postgres}"
PG_PASSWORD="$URL_PASSWORD"
PG_DB="${URL_DB:-test}"
parse_url "$REDIS_URL_EFFECTIVE" 6379
REDIS_HOST="${WHARF_REDIS_HOST:-$URL_HOST}"
REDIS_PORT="${WHARF_REDIS_PORT:-$URL_PORT}"

is_local() { case "$1" in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac }

# tcp_open HOST PORT: something accepts TCP connections there.
tcp_open() {
	timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# Finds a Postgres server binary directory (initdb, pg_ctl, postgres); prints it.
pg_bindir() {
	local d
	if command -v pg_config >/dev/null 2>&1; then
		d="$(pg_config --bindir 2>/dev/null)"
		if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
			echo "$d"
			return 0
		fi
	fi
	for d in $(ls -d /usr/lib/postgresql/*/bin /usr/pgsql-*/bin 2>/dev/null | sort -V -r); do
		if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
			echo "$d"
			return 0
		fi
	done
	if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
		d="$(dirname "$(readlink -f "$(command -v initdb)")")"
		echo "$d"
		return 0
	fi
	return 1
}

psql_bin() {
	local d
	if d="$(pg_bindir)" && [ -x "$d/psql" ]; then
		echo "$d/psql"
	elif command -v psql >/dev/null 2>&1; then
		command -v psql
	else
		return 1
	fi
}

# pg_answers: the server accepts connections (and, when psql is available, the URL's
# database can be queried).
pg_answers() {
	local psql
	if psql="$(psql_bin)"; then
		PGCONNECT_TIMEOUT=3 PGPASSWORD="$PG_PASSWORD" "$psql" -X -q -A -t -w \
			-h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -c 'SELECT 1' >/dev/null 2>&1
	elif command -v pg_isready >/dev/null 2>&1; then
		pg_isready -q -t 3 -h "$PG_HOST" -p "$PG_PORT"
	else
		tcp_open "$PG_HOST" "$PG_PORT"
	fi
}

redis_answers() {
	timeout 3 bash -c '
		exec 3<>"/dev/tcp/$0/$1" || exit 1
		printf "PING\r\n" >&3
		IFS= read -r line <&3 || exit 1
		case "$line" in +PONG* | -NOAUTH*) exit 0 ;; *) exit 1 ;; esac
	' "$1" "$2" 2>/dev/null
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
	local secs="$1" what="$2" i
	shift 2
	for ((i = 0; i < secs * 10; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	log "$what did not answer within ${secs}s"
	return 1
}

apt_install() {
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confold "$@"
}

APT_UPDATED=0
apt_update_once() {
	if [ "$APT_UPDATED" = 0 ]; then
		as_root apt-get update -qq || return 1
		APT_UPDATED=1
	fi
}

check_sudo() {
	if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then
		die "$1 is missing and installing it needs root; install it (or sudo) and run again"
	fi
}

install_postgres() {
	check_sudo "the Postgres server"
	log "installing the Postgres server (OS package)"
	if command -v apt-get >/dev/null 2>&1; then
		apt_update_once || return 1
		# Like the official postgres images: keep the package from creating and starting its own
		# cluster (it would take the port with password auth); this script starts its own.
		apt_install postgresql-common || return 1
		local conf=/etc/postgresql-common/createcluster.conf
		if [ -f "$conf" ]; then
			as_root sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$conf"
		fi
		apt_install postgresql || return 1
	elif command -v dnf >/dev/null 2>&1; then
		as_root dnf install -y -q postgresql-server postgresql || return 1
	else
		return 1
	fi
}

install_redis() {
	check_sudo "redis-server"
	log "installing redis-server (OS package)"
	if command -v apt-get >/dev/null 2>&1; then
		apt_update_once || return 1
		apt_install redis-server || return 1
	elif command -v dnf >/dev/null 2>&1; then
		as_root dnf install -y -q redis || return 1
	else
		return 1
	fi
}

# as_pg_owner COMMAND...: runs a Postgres server command as a user initdb accepts.
as_pg_owner() {
	if [ "$(id -u)" = 0 ]; then
		if command -v runuser >/dev/null 2>&1; then
			runuser -u postgres -- "$@"
		elif command -v sudo >/dev/null 2>&1; then
			sudo -u postgres -- "$@"
		else
			su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
		fi
	else
		"$@"
	fi
}

sql_quote_ident() { printf '"%s"' "${1//\"/\"\"}"; }
sql_quote_literal() { printf "'%s'" "${1//\'/\'\'}"; }

start_postgres() {
	local bindir data psql listen
	bindir="$(pg_bindir)" || die "no initdb/pg_ctl found even after installing Postgres"
	if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
		useradd --system --no-create-home --shell /bin/sh postgres ||
			die "initdb refuses to run as root and there is no 'postgres' user (creating one failed)"
	fi
	mkdir -p "$STATE_DIR" || die "cannot create $STATE_DIR"
	chmod 755 "$STATE_DIR"
	stop_postgres "$PG_PORT" quiet
	data="$(mktemp -d "$STATE_DIR/pg-$PG_PORT.XXXXXX")" || die "cannot create a data directory in $STATE_DIR"
	[ "$(id -u)" = 0 ] && chown postgres: "$data"
	chmod 700 "$data"
	log "starting a throwaway Postgres on $PG_HOST:$PG_PORT (data and socket in $data)"
	as_pg_owner "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C >"$STATE_DIR/initdb.log" 2>&1 || {
		tail -n 20 "$STATE_DIR/initdb.log" >&2
		die "initdb failed (log: $STATE_DIR/initdb.log)"
	}
	echo "$data" >"$STATE_DIR/pg-$PG_PORT.dir"
	case "$PG_HOST" in
	localhost) listen=localhost ;;
	*) listen="$PG_HOST" ;;
	esac
	as_pg_owner "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 30 \
		-o "-p $PG_PORT -k $data -h $listen" start >/dev/null || {
		tail -n 20 "$data/server.log" >&2
		die "Postgres did not start on $PG_HOST:$PG_PORT (log: $data/server.log)"
	}
	psql="$bindir/psql"
	[ -x "$psql" ] || psql="$(command -v psql)" || die "psql not found"
	local q=("$psql" -X -q -v ON_ERROR_STOP=1 -h "$data" -p "$PG_PORT" -U postgres -d postgres)
	if [ "$PG_USER" != postgres ]; then
		as_pg_owner "${q[@]}" -c "CREATE ROLE $(sql_quote_ident "$PG_USER") SUPERUSER LOGIN" >/dev/null ||
			die "cannot create role $PG_USER"
	fi
	if [ "$PG_DB" != postgres ]; then
		as_pg_owner "${q[@]}" -c "CREATE DATABASE $(sql_quote_ident "$PG_DB") OWNER $(sql_quote_ident "$PG_USER")" >/dev/null ||
			die "cannot create database $PG_DB"
	fi
}

# stop_postgres PORT [quiet]: stops the throwaway instance this script started on PORT.
stop_postgres() {
	local port="$1" data bindir
	[ -f "$STATE_DIR/pg-$port.dir" ] || return 0
	data="$(cat "$STATE_DIR/pg-$port.dir")"
	if [ -d "$data" ] && bindir="$(pg_bindir)"; then
		[ "${2:-}" = quiet ] || log "stopping the throwaway Postgres on port $port ($data)"
		as_pg_owner "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
	fi
	case "$data" in "$STATE_DIR"/pg-"$port".*) rm -rf "$data" ;; esac
	rm -f "$STATE_DIR/pg-$port.dir"
}

start_redis() {
	local server
	server="$(command -v redis-server || ls /usr/sbin/redis-server /usr/bin/redis-server 2>/dev/null | head -n 1)"
	[ -n "$server" ] || die "redis-server not found even after installing it"
	mkdir -p "$STATE_DIR" || die "cannot create $STATE_DIR"
	local bind="$REDIS_HOST"
	[ "$bind" = localhost ] && bind=127.0.0.1
	log "starting a throwaway Redis on $REDIS_HOST:$REDIS_PORT"
	"$server" --port "$REDIS_PORT" --bind "$bind" --save "" --appendonly no --daemonize yes \
		--dir "$STATE_DIR" --pidfile "$STATE_DIR/redis-$REDIS_PORT.pid" \
		--logfile "$STATE_DIR/redis-$REDIS_PORT.log" ||
		die "redis-server did not start (log: $STATE_DIR/redis-$REDIS_PORT.log)"
}

# stop_redis PORT: stops the throwaway instance this script started on PORT.
stop_redis() {
	local port="$1" pid
	[ -f "$STATE_DIR/redis-$port.pid" ] || return 0
	pid="$(cat "$STATE_DIR/redis-$port.pid")"
	log "stopping the throwaway Redis on port $port (pid $pid)"
	kill "$pid" 2>/dev/null || true
	rm -f "$STATE_DIR/redis-$port.pid"
}

ensure_postgres() {
	if pg_answers; then
		log "Postgres answers on $PG_HOST:$PG_PORT (database $PG_DB)"
		return 0
	fi
	if tcp_open "$PG_HOST" "$PG_PORT"; then
		die "something listens on $PG_HOST:$PG_PORT but database '$PG_DB' cannot be queried as '$PG_USER' \
(check DATABASE_URL, the role, the database and pg_hba.conf)"
	fi
	is_local "$PG_HOST" || die "Postgres at $PG_HOST:$PG_PORT does not answer, and it is not on this machine"
	pg_bindir >/dev/null || install_postgres || die "Postgres is not installed and installing it failed; \
install the postgresql package or set DATABASE_URL to a running server"
	start_postgres
	wait_for 30 "Postgres on $PG_HOST:$PG_PORT" pg_answers || die "the throwaway Postgres does not answer"
	log "Postgres answers on $PG_HOST:$PG_PORT (database $PG_DB)"
}

ensure_redis() {
	if redis_answers "$REDIS_HOST" "$REDIS_PORT"; then
		log "Redis answers on $REDIS_HOST:$REDIS_PORT"
		return 0
	fi
	if tcp_open "$REDIS_HOST" "$REDIS_PORT"; then
		die "something listens on $REDIS_HOST:$REDIS_PORT but does not answer PING like Redis"
	fi
	is_local "$REDIS_HOST" || die "Redis at $REDIS_HOST:$REDIS_PORT does not answer, and it is not on this machine"
	if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/sbin/redis-server ]; then
		install_redis || die "redis-server is not installed and installing it failed; \
install the redis-server package or set REDIS_URL to a running server"
		# The package may have started its own service on the default port.
		if wait_for 3 "Redis (package service)" redis_answers "$REDIS_HOST" "$REDIS_PORT" 2>/dev/null; then
			log "Redis answers on $REDIS_HOST:$REDIS_PORT"
			return 0
		fi
	fi
	start_redis
	wait_for 15 "Redis on $REDIS_HOST:$REDIS_PORT" redis_answers "$REDIS_HOST" "$REDIS_PORT" ||
		die "the throwaway Redis does not answer"
	log "Redis answers on $REDIS_HOST:$REDIS_PORT"
}

case "${1:-start}" in
start)
	ensure_postgres
	ensure_redis
	;;
stop)
	stop_postgres "$PG_PORT"
	stop_redis "$REDIS_PORT"
	;;
*)
	die "usage: $0 [start|stop]"
	;;
esac
