#!/usr/bin/env bash
# Interleaved A/B of two `concord` binaries on the shop's write path (docs/BENCHMARKS.md,
# "The primary's ack path"). Each binary runs a `--replication none` shop and a
# `--replication sync` shop with its replica, side by side; every round runs
# `concord bench shop --operation create` against each configuration, old and new one
# after the other (order alternating per round), and attaches
# `perf stat -e task-clock,context-switches` to the primary (and the replica in sync)
# for the measured window: CPU µs and context switches per write, which depend far less
# on the machine's load than the throughput does. Medians over the rounds.
#
# Usage: ROUNDS=3 DUR=4 CS="16 1" MODES="none sync" shop/benches/ab_binaries.sh OLD NEW
# (OLD, NEW: paths of release-built `concord` binaries; needs perf, python3.)
set -euo pipefail
OLD=$1; NEW=$2
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-4}; CS=${CS:-"16 1"}; MODES=${MODES:-"none sync"}
OP=${OP:-create}
WORK=$(mktemp -d /tmp/concord-ab.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p -m 700 "$WORK/cluster/secrets"
for f in cluster-secret admin-token oracle-token session-key; do
  (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$WORK/cluster/secrets/$f")
done
CONCORD_CREDENTIAL=$("$OLD" token credential shop --data-dir "$WORK/cluster")
CONCORD_ADMIN_TOKEN=$("$OLD" token admin --data-dir "$WORK/cluster")
export CONCORD_CREDENTIAL CONCORD_ADMIN_TOKEN
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A PORT PID
start() { # key bin args...
  local key=$1 bin=$2; shift 2
  local port; port=$(free_port)
  "$bin" shop --listen "127.0.0.1:$port" --data-dir "$WORK/$key" "$@" >"$WORK/$key.log" 2>&1 &
  PIDS+=($!); PID[$key]=$!; PORT[$key]=$port
}
for tag in old new; do
  bin=$OLD; [ $tag = new ] && bin=$NEW
  start $tag-none $bin --replication none
  start $tag-sync $bin --replication sync
  start $tag-sync-r $bin --replica-of "127.0.0.1:${PORT[$tag-sync]}"
done
sleep 2
perf_ms() { # pid secs -> "task_ms cs"
  perf stat -x, -e task-clock,context-switches -p "$1" -- sleep "$2" 2>&1 >/dev/null \
    | awk -F, '/task-clock/ {t=$1} /context-switches/ {c=$1} END {print t, c}'
}
RES="$WORK/res.tsv"; : >"$RES"
WIN=$(python3 -c "print($DUR - 0.5)")
echo "== $(date -u +%H:%M:%S) rounds=$ROUNDS dur=$DUR op=$OP load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  for c in $CS; do
    for mode in $MODES; do
      order="old new"; [ $((r % 2)) = 0 ] && order="new old"
      for tag in $order; do
        bin=$OLD; [ $tag = new ] && bin=$NEW
        key=$tag-$mode
        out=$WORK/bench.out
        "$bin" bench shop --target "127.0.0.1:${PORT[$key]}" --concurrency "$c" --duration "${DUR}s" --operation "$OP" >"$out" 2>/dev/null &
        bp=$!
        sleep 1.2
        perf stat -x, -o "$WORK/p.txt" -e task-clock,context-switches -p "${PID[$key]}" -- sleep "$WIN" >/dev/null 2>&1 &
        pp=$!
        : >"$WORK/r.txt"
        if [ "$mode" = sync ]; then
          perf stat -x, -o "$WORK/r.txt" -e task-clock,context-switches -p "${PID[$key-r]}" -- sleep "$WIN" >/dev/null 2>&1 &
          rp=$!; wait $rp || true
        fi
        wait $pp || true
        wait $bp || true
        tput=$(awk '/throughput/ { for (i = 1; i <= NF; i++) if ($i == "throughput") { sub("/s", "", $(i+1)); print $(i+1) } }' "$out")
        read -r pms pcs < <(awk -F, '/task-clock/ {t=$1} /context-switches/ {c=$1} END {print t+0, c+0}' "$WORK/p.txt")
        read -r rms rcs < <(awk -F, '/task-clock/ {t=$1} /context-switches/ {c=$1} END {print t+0, c+0}' "$WORK/r.txt")
        per=$(python3 -c "n=max(1.0,$tput*$WIN); print(f'{$pms/n*1000:.1f} {$pcs/n:.2f} {$rms/n*1000:.1f} {$rcs/n:.2f}')")
        read -r pus pcsw rus rcsw <<<"$per"
        echo -e "$c\t$mode\t$tag\t$tput\t$pus\t$pcsw\t$rus\t$rcsw" >>"$RES"
        echo "r$r c=$c $mode $tag $tput/s  primary ${pus}us ${pcsw}cs/write  replica ${rus}us ${rcsw}cs/write  load $(cut -d' ' -f1 /proc/loadavg)"
      done
    done
  done
done

python3 - "$RES" <<'PY'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    c, mode, tag, *v = line.split("\t")
    runs[(int(c), mode, tag)].append([float(x) for x in v])
print("| c | mode | old /s | new /s | new/old | old prim us/w | new prim us/w | old cs/w | new cs/w | old repl us/w | new repl us/w |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
keys = sorted({(c, m) for c, m, _ in runs}, key=lambda k: (-k[0], k[1]))
for c, m in keys:
    med = {t: [statistics.median(col) for col in zip(*runs[(c, m, t)])] for t in ("old", "new") if (c, m, t) in runs}
    o, n = med["old"], med["new"]
    print(f"| {c} | {m} | {o[0]:,.0f} | {n[0]:,.0f} | {n[0]/o[0]:.2f}x | {o[1]:.0f} | {n[1]:.0f} | {o[2]:.2f} | {n[2]:.2f} | {o[3]:.0f} | {n[3]:.0f} |")
print("all:", {f"{k}": [v[0] for v in vs] for k, vs in sorted(runs.items())})
PY
echo "== end $(date -u +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)"
