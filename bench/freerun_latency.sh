#!/usr/bin/env bash
# Free-run verdict latency on boards/sim.toml (synthetic 256×256 camera at 30 fps, queue depth 8) with a real
# model: capture → verdict p50/p99 from the unit's own Stats after a warm-up, for one or two kestrel-edge binaries
# back to back on the same machine.
#
#   BUNDLE=model.kbundle PUB=signing.pub bash bench/freerun_latency.sh [OTHER_KESTREL_EDGE OTHER_KESTREL]
#
# The optional pair is an older build ("before"): its own kestrel CLI reads its Stats, since builds of different
# protocol schemas refuse each other.
#
# Environment: KESTREL / KESTREL_EDGE (default target/release/...), SECONDS_RUN (30), OUT (target/freerun-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
KESTREL=${KESTREL:-target/release/kestrel}
KESTREL_EDGE=${KESTREL_EDGE:-target/release/kestrel-edge}
BUNDLE=${BUNDLE:?set BUNDLE to a .kbundle}
PUB=${PUB:?set PUB to the public key that signed it}
OUT=${OUT:-target/freerun-bench}
RUN=${SECONDS_RUN:-30}

measure() {
  local edge=$1 cli=$2 label=$3
  rm -rf "$OUT/$label" && mkdir -p "$OUT/$label/trusted"
  cp "$PUB" "$OUT/$label/trusted/bench.pub"
  "$edge" run --board boards/sim.toml --state "$OUT/$label" --model "$BUNDLE" >"$OUT/$label.log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do grep -q "TCP link listening" "$OUT/$label.log" && break; sleep 0.1; done
  local tcp
  tcp=$(grep -o "TCP link listening on [0-9.:]*" "$OUT/$label.log" | awk '{print $NF}')
  sleep "$RUN"
  # The last Stats a monitor receives while it shows 20 verdicts: counters and latency percentiles over the unit's recent window.
  timeout 30 "$cli" monitor --unit "tcp://$tcp" --key-file "$OUT/$label/unit.key" --json --count 20 \
    | grep '"type":"stats"' | tail -1 >"$OUT/$label.stats.json" || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  python3 - "$label" "$OUT/$label.stats.json" <<'PYEOF'
import json, sys
label, path = sys.argv[1], sys.argv[2]
s = json.loads(open(path).readline())
s = s.get("stats", s)
print(f"{label:<8} frames {s['frames']:>5}  dropped {s['dropped']:>5}  latency p50 {s['latency_p50_us'] / 1e3:7.1f} ms  "
      f"p99 {s['latency_p99_us'] / 1e3:7.1f} ms")
PYEOF
}

if [ $# -ge 2 ]; then measure "$1" "$2" before; fi
measure "$KESTREL_EDGE" "$KESTREL" after
