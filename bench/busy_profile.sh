#!/usr/bin/env bash
# Where a turn's extra web CPU goes on a machine with no idle core: one client, the bare and
# turn phases of bench/turn_throughput.py with the cores otherwise idle, then again beside
# two spinners at nice 19 (--spinners 2 --spin loop), while `perf record` samples both
# gunicorn workers on the software cpu-clock (no hardware counters needed). Each phase's
# samples are cut out by the times the bench prints, and for each it prints perf's CPU ms
# per operation, its split by library (the interpreter, the kernel, ...) and its top
# functions. (A profile by C function tells the kernel from the interpreter, not more
# Python from the same Python run slower: any Python code splits much alike.)
# Usage (as root, or with perf_event_paranoid <= 1; the services running):
#   bash bench/busy_profile.sh [seconds per phase, default 30]
# It uses its own database (bench_busy_profile) and Redis database 13.
set -euo pipefail
secs=${1:-30}
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() {
  echo "busy_profile: $*" >&2
  kill "$bench" 2>/dev/null || true
  cat "$dir/bench.log" "$dir/perf.log" >&2 2>/dev/null || true
  exit 1
}
.venv/bin/python bench/turn_throughput.py --seconds "$secs" --clients 1 --spinners 2 \
  --spin loop --no-floor --no-sql --no-read --broker redis --redis-db 13 \
  --db-name bench_busy_profile >"$dir/bench.log" 2>&1 &
bench=$!
workers=""
for _ in $(seq 240); do  # this bench's gunicorn (its child) and both of its workers
  master=$(pgrep -P "$bench" -f "gunicorn" || true)
  if [ -n "$master" ]; then
    workers=$(pgrep -P "$master" | paste -sd, || true)
    [ "$(echo "$workers" | tr ',' '\n' | grep -c .)" -ge 2 ] && break
  fi
  kill -0 "$bench" 2>/dev/null || fail "the bench ended before gunicorn's workers were up"
  sleep 0.5
done
[ -n "$workers" ] || fail "gunicorn's workers did not come up within 120 s"
perf record -q -e cpu-clock -F 499 -g -k CLOCK_MONOTONIC -p "$workers" -o "$dir/perf.data" \
  >"$dir/perf.log" 2>&1 &
perf=$!
wait "$bench" || fail "the bench failed"
kill -INT "$perf" 2>/dev/null || true  # it ends by itself once gunicorn's workers have
wait "$perf" || true
[ -s "$dir/perf.data" ] || fail "perf recorded nothing"
grep -E "^(== |ratio|bare |turn )|^\| redis \| 1 \| [0-9.]+ -> " "$dir/bench.log" || true
# Phases print "# phase NAME: monotonic START to END, N done"; the spinners, "# spinners on"
# and "# spinners off" around the phases they run beside.
awk '/^# spinners on/ { busy = 1 } /^# spinners off/ { busy = 0 }
  /^# phase / { gsub(/[:,]/, ""); print $3, $5, $7, $8, busy + 0 }' "$dir/bench.log" |
  while read -r name start end done busy; do
    [ "$busy" = 1 ] && label="$name, beside the spinners" || label="$name, cores otherwise idle"
    report=(perf report -i "$dir/perf.data" --time "$start,$end" --stdio --no-children)
    ns=$("${report[@]}" --sort dso 2>/dev/null | sed -n 's/^# Event count (approx.): //p' || true)
    echo
    if [ -z "$ns" ] || [ "$done" -eq 0 ]; then
      echo "== $label: $done done, no samples"
      continue
    fi
    echo "== $label: $done done, $(awk -v ns="$ns" -v d="$done" \
      'BEGIN { printf "%.2f", ns / 1e6 / d }') ms of web CPU per operation (perf)"
    { "${report[@]}" --sort dso 2>/dev/null || true; } | awk '/^ +[0-9.]+%/ && n++ < 4'
    { "${report[@]}" --sort sym 2>/dev/null || true; } | awk '/^ +[0-9.]+%/ && n++ < 10'
  done
