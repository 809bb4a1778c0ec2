#!/usr/bin/env bash
# One pretraining step, candle (kestrel's engine) vs PyTorch CPU, back to back; prints candle/torch time ratios.
#
#   bash bench/train_compare.sh            # THREADS=2 REPEAT=5 by default; needs bench/.venv (bash bench/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
REPEAT=${REPEAT:-5}
PY=bench/.venv/bin/python
[ -x "$PY" ] || { echo "bench/.venv missing: run bash bench/setup.sh" >&2; exit 2; }
TMP=$(mktemp -d)
cargo bench -p kestrel-host --bench train_step --no-run >&2
"$PY" bench/torch_train_bench.py --threads "$THREADS" --repeat "$REPEAT" --json "$TMP/torch.json" >/dev/null
RAYON_NUM_THREADS=$THREADS cargo bench -q -p kestrel-host --bench train_step -- --repeat "$REPEAT" \
    --json "$TMP/rust.json" >/dev/null
python3 - "$TMP/torch.json" "$TMP/rust.json" <<'PYEOF'
import json, sys
t, r = (json.load(open(p)) for p in sys.argv[1:3])
print(f"| step (fwd + CE + bwd + SGD), {t['meta']['threads']} threads | torch ms | candle ms | candle / torch |")
print("|---|---:|---:|---:|")
for k, v in t["results"].items():
    c = r["results"][k]["median_ms"]
    print(f"| {k} | {v['median_ms']:.1f} | {c:.1f} | **{c / v['median_ms']:.2f}** |")
print(f"\nload average at start: torch {t['meta']['loadavg_start']:.2f}, candle {r['meta']['loadavg_start']}")
PYEOF
