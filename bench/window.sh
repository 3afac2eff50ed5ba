#!/usr/bin/env bash
# CPU, context switches and syscalls per message of the gateway, counted
# with `perf stat` over 4 s in the middle of a 30,000-message run of
# bench/relay.py (1k-20s, --scale 3): steadier than the whole-run figure
# for A/B of one step. Usage, builds alternating:
#   MAILGATE_BIN=/tmp/mailgate-before bench/window.sh mailgate-plugins
#   MAILGATE_BIN=/tmp/mailgate-after  bench/window.sh mailgate-plugins
# Needs perf (Debian's linux-perf) and a release build; run nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
relay=${1:-mailgate}
bin=${MAILGATE_BIN:-$PWD/target/release/mailgate}
out=$(mktemp -d)
MAILGATE_BIN=$bin python3 bench/relay.py --no-setup --relays "$relay" --workloads 1k-20s \
    --runs 1 --scale 3 --out "$out/relay.md" > "$out/relay.out" 2>&1 &
bench=$!
pid=
for _ in $(seq 100); do
    pid=$(pgrep -nf "$bin run" || true)
    [ -n "$pid" ] && break
    sleep 0.2
done
[ -n "$pid" ] || { echo "the gateway did not start; see $out/relay.out" >&2; exit 1; }
sleep 3
timeout -s INT 4 perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "$pid" \
    2> "$out/perf.csv" || true
wait "$bench"
rate=$(grep -E "^\| 1k-20s \| $relay \|" "$out/relay.out" | head -1 | awk -F'|' '{print $4}')
python3 - "$rate" "$out/perf.csv" <<'PY'
import sys
rate = float(sys.argv[1])
counts = {}
for line in open(sys.argv[2]):
    fields = line.strip().split(",")
    if len(fields) > 3 and fields[0][:1].isdigit():
        counts[fields[2]] = float(fields[0])
messages = rate * 4
print(f"{rate:.0f} msg/s; per message over the 4 s window: "
      f"{counts.get('task-clock', 0) / messages:.3f} ms CPU, "
      f"{counts.get('context-switches', 0) / messages:.2f} context switches, "
      f"{counts.get('raw_syscalls:sys_enter', 0) / messages:.1f} syscalls")
PY
