#!/usr/bin/env bash
# Concord shop writes vs PostgreSQL 15, side by side in ONE interleaved run.
#
# PostgreSQL: a primary + a streaming standby on loopback (synchronous_commit=on), pgbench
# single-row INSERT (prepared). "none" = the standby stopped and synchronous_standby_names
# empty; "sync" = the standby streaming with synchronous_standby_names set to it.
# Concord: `concord shop` with --replication none / sync (+ replica) / async (+ replica),
# loaded by `concord bench shop --operation create` (one CreateProduct per request).
# Each round also measures the floor: `--operation health` (grpc.health.v1 Check, no
# storage), i.e. what one unary gRPC round trip costs on this machine.
# Each round runs every configuration once, at each concurrency, one after the other, so
# the machine's background load hits all of them alike; medians over the rounds.
#
# Usage: scripts/bench-vs-postgres.sh            (ROUNDS=3 DURATION=8 CONCURRENCY="16 1")
# Installs PostgreSQL 15 from Debian (apt-get) when it is missing; needs root for that and
# to run postgres as the postgres user. Release-builds `concord` when target/release lacks it.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONCURRENCY=${CONCURRENCY:-"16 1"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONCORD=${CONCORD:-$ROOT/target/release/concord}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

if [ ! -x "$PGBIN/postgres" ]; then
  echo "== installing PostgreSQL 15 (apt-get install -y postgresql)"
  apt-get install -y postgresql >/dev/null || { apt-get update >/dev/null && apt-get install -y postgresql >/dev/null; }
fi
if [ ! -x "$CONCORD" ]; then
  echo "== building concord (release)"
  (cd "$ROOT" && cargo build --release -p concord-cli >/dev/null)
fi

WORK=$(mktemp -d /tmp/concord-vs-pg.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for d in pg1 pg2; do as_pg "$PGBIN/pg_ctl" -D "$WORK/$d" -m immediate stop >/dev/null 2>&1 || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- PostgreSQL primary + standby ----
P1=$(free_port); P2=$(free_port)
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
as_pg "$PGBIN/initdb" -D "$WORK/pg1" --auth=trust -U postgres >/dev/null
cat >>"$WORK/pg1/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $P1
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_senders = 4
synchronous_commit = on
fsync = on
synchronous_standby_names = ''
EOF
echo "host replication all 127.0.0.1/32 trust" >>"$WORK/pg1/pg_hba.conf"
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg1" -l "$WORK/pg1.log" -w start >/dev/null
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$P1" -U postgres -D "$WORK/pg2" -R -X stream >/dev/null
echo "port = $P2" >>"$WORK/pg2/postgresql.conf"
# postgresql.auto.conf (written by -R) wins over postgresql.conf: name the standby there.
echo "primary_conninfo = 'host=127.0.0.1 port=$P1 user=postgres application_name=standby1'" >>"$WORK/pg2/postgresql.auto.conf"
psql_p1() { as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$P1" -U postgres -qAtX -c "$1"; }
psql_p1 "CREATE TABLE products (id bigserial PRIMARY KEY, name text NOT NULL, price_minor bigint NOT NULL, stock bigint NOT NULL)"
echo "INSERT INTO products (name, price_minor, stock) VALUES ('bench product', 100, 10);" >"$WORK/insert.sql"
chmod 644 "$WORK/insert.sql"

pg_mode() { # none | sync
  if [ "$1" = sync ]; then
    as_pg "$PGBIN/pg_ctl" -D "$WORK/pg2" -l "$WORK/pg2.log" -w start >/dev/null 2>&1 || true
    psql_p1 "ALTER SYSTEM SET synchronous_standby_names = 'standby1'" && psql_p1 "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 300); do
      [ "$(psql_p1 "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync' AND state = 'streaming'")" = 1 ] && return
      sleep 0.1
    done
    echo "standby did not become synchronous" >&2; exit 1
  else
    psql_p1 "ALTER SYSTEM SET synchronous_standby_names = ''" && psql_p1 "SELECT pg_reload_conf()" >/dev/null
    as_pg "$PGBIN/pg_ctl" -D "$WORK/pg2" -m fast -w stop >/dev/null 2>&1 || true
  fi
}
pg_run() { # concurrency -> tps
  local c=$1 j=$(( $1 < 2 ? 1 : 2 ))
  as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$P1" -U postgres -n -M prepared -c "$c" -j "$j" -T "$DURATION" -f "$WORK/insert.sql" postgres 2>/dev/null \
    | awk '/^tps = / { printf "%.0f\n", $3 }'
}

# ---- Concord shops: none, sync pair, async pair ----
# A throwaway cluster: random secrets under $WORK/cluster/secrets, every shop holds the shop
# credential (shops replicate only with a shop), the bench the admin token (environment,
# not arguments).
mkdir -p -m 700 "$WORK/cluster/secrets"
for f in cluster-secret admin-token oracle-token session-key; do
  (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$WORK/cluster/secrets/$f")
done
CONCORD_CREDENTIAL=$("$CONCORD" token credential shop --data-dir "$WORK/cluster")
CONCORD_ADMIN_TOKEN=$("$CONCORD" token admin --data-dir "$WORK/cluster")
export CONCORD_CREDENTIAL CONCORD_ADMIN_TOKEN
start_shop() { # name port args...
  local name=$1 port=$2; shift 2
  "$CONCORD" shop --listen "127.0.0.1:$port" --data-dir "$WORK/$name" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}
SN=$(free_port); SS=$(free_port); SSR=$(free_port); SA=$(free_port); SAR=$(free_port)
start_shop none "$SN" --replication none
start_shop sync "$SS" --replication sync
start_shop sync-replica "$SSR" --replica-of "127.0.0.1:$SS"
start_shop async "$SA" --replication async
start_shop async-replica "$SAR" --replica-of "127.0.0.1:$SA"
sleep 2
concord_run() { # port concurrency [operation] -> requests/s
  "$CONCORD" bench shop --target "127.0.0.1:$1" --concurrency "$2" --duration "${DURATION}s" --operation "${3:-create}" 2>/dev/null \
    | awk '/throughput/ { for (i = 1; i <= NF; i++) if ($i == "throughput") { sub("/s", "", $(i+1)); print $(i+1) } }'
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
echo "== $ROUNDS rounds × ${DURATION}s, concurrency $CONCURRENCY; $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for round in $(seq "$ROUNDS"); do
  for c in $CONCURRENCY; do
    pg_mode none;  v=$(pg_run "$c");          echo -e "$c\tpg_none\t$v" >>"$RESULTS";    echo "round $round c=$c PG none      $v/s"
    v=$(concord_run "$SN" "$c");              echo -e "$c\tconcord_none\t$v" >>"$RESULTS"; echo "round $round c=$c Concord none $v/s"
    pg_mode sync;  v=$(pg_run "$c");          echo -e "$c\tpg_sync\t$v" >>"$RESULTS";    echo "round $round c=$c PG sync      $v/s"
    v=$(concord_run "$SS" "$c");              echo -e "$c\tconcord_sync\t$v" >>"$RESULTS"; echo "round $round c=$c Concord sync $v/s"
    v=$(concord_run "$SA" "$c");              echo -e "$c\tconcord_async\t$v" >>"$RESULTS"; echo "round $round c=$c Concord async $v/s"
    # The floor: a grpc.health.v1 Check, the cheapest unary call (no shop code at all).
    v=$(concord_run "$SN" "$c" health);       echo -e "$c\tgrpc_health\t$v" >>"$RESULTS";  echo "round $round c=$c gRPC health  $v/s"
  done
done

python3 - "$RESULTS" <<'EOF'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    c, what, v = line.split("\t")
    runs[(int(c), what)].append(float(v))
med = {k: statistics.median(v) for k, v in runs.items()}
print()
print("| c | PG none | Concord none | PG sync | Concord sync | Concord async | sync / PG sync | none / PG none | Concord sync / none |")
print("|---|---|---|---|---|---|---|---|---|")
for c in sorted({c for c, _ in med}, reverse=True):
    g = lambda w: med[(c, w)]
    print(f"| {c} | {g('pg_none'):,.0f}/s | {g('concord_none'):,.0f}/s | {g('pg_sync'):,.0f}/s | "
          f"{g('concord_sync'):,.0f}/s | {g('concord_async'):,.0f}/s | {g('concord_sync')/g('pg_sync'):.2f}× | "
          f"{g('concord_none')/g('pg_none'):.2f}× | {g('concord_sync')/g('concord_none'):.0%} |")
print()
print("Floor (grpc.health.v1 Check on the none shop, no storage): " + ", ".join(
    f"c={c} {med[(c, 'grpc_health')]:,.0f}/s" for c in sorted({c for c, _ in med}, reverse=True)))
print()
print("all rounds:", {f"c={c} {w}": [int(x) for x in v] for (c, w), v in sorted(runs.items())})
EOF
