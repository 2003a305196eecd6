#!/usr/bin/env bash
# Where a turn's extra web CPU goes on a machine with no idle core: one client, the bare and
# turn phases of bench/turn_throughput.py with the cores otherwise idle, then again beside
# two spinners at nice 19 (--spinners 2 --spin loop), while `perf record` samples both
# gunicorn workers on the software cpu-clock (no hardware counters needed). Each phase's
# samples are cut out by the times the bench prints, and for each it prints perf's CPU ms
# per operation, its split by library (the interpreter, the kernel, ...) and its top
# functions: a code path that does more shows new functions, a machine that runs the same
# code slower shows the same shares.
# Usage (as root, or with perf_event_paranoid <= 1; the services running):
#   bash bench/busy_profile.sh [seconds per phase, default 30]
# It uses its own database (bench_busy_profile) and Redis database 13.
set -euo pipefail
secs=${1:-30}
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
.venv/bin/python bench/turn_throughput.py --seconds "$secs" --clients 1 --spinners 2 \
  --spin loop --no-floor --no-sql --no-read --broker redis --redis-db 13 \
  --db-name bench_busy_profile >"$dir/bench.log" 2>&1 &
bench=$!
master=""
for _ in $(seq 120); do  # gunicorn and both its workers up
  master=$(pgrep -o -f "gunicorn isolation_site.wsgi" || true)
  if [ -n "$master" ] && [ "$(pgrep -P "$master" | wc -l)" -ge 2 ]; then break; fi
  sleep 0.5
done
workers=$(pgrep -P "$master" | paste -sd,)
perf record -q -e cpu-clock -F 499 -g -k CLOCK_MONOTONIC -p "$workers" -o "$dir/perf.data" \
  >"$dir/perf.log" 2>&1 &
perf=$!
wait "$bench"
kill -INT "$perf" 2>/dev/null || true  # it ends by itself once gunicorn's workers have
wait "$perf" || true
grep -E "^(== |ratio|bare |turn )|^\| redis \| 1 \| [0-9.]+ -> " "$dir/bench.log" || true
# The bench prints "# phase NAME: monotonic START to END, N done", the quiet phases first.
n=0
while read -r name start end done; do
  n=$((n + 1))
  [ "$n" -le 2 ] && label="$name, cores otherwise idle" || label="$name, beside the spinners"
  report=(perf report -i "$dir/perf.data" --time "$start,$end" --stdio --no-children)
  ns=$("${report[@]}" --sort dso 2>/dev/null | sed -n 's/^# Event count (approx.): //p')
  echo
  echo "== $label: $done done, $(awk -v ns="$ns" -v d="$done" \
    'BEGIN { printf "%.2f", ns / 1e6 / d }') ms of web CPU per operation (perf)"
  "${report[@]}" --sort dso 2>/dev/null | grep -E '^ +[0-9.]+%' | awk 'NR <= 4'
  "${report[@]}" --sort sym 2>/dev/null | grep -E '^ +[0-9.]+%' | awk 'NR <= 10'
done < <(sed -n 's/^# phase \([a-z]*\): monotonic \([0-9.]*\) to \([0-9.]*\), \([0-9]*\) done$/\1 \2 \3 \4/p' "$dir/bench.log")
