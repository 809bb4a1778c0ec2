#!/usr/bin/env bash
# Run the PyTorch and the Rust (candle) inference benchmarks back to back and print candle/torch time ratios.
#
#   bash bench/compare.sh                      # writes bench/results/ratios-$(date +%F).md
#   OUT=/tmp/r.md REPEAT=3 bash bench/compare.sh
#
# Environment:
#   THREADS         threads on both sides (torch set_num_threads/OMP, RAYON_NUM_THREADS)   default 2
#   REPEAT          timed runs per case (median reported)                                    default 5
#   CORESET_SELECT  greedy coreset steps on 100k x 384 (10000 = the full 10 %; the table
#                   also shows both sides extrapolated linearly to 10000)                   default 1000
#   WAIT_IDLE       seconds each case may wait for other processes to go quiet               default 120
#   OUT             markdown report path                                                     default bench/results/ratios-DATE.md
#   KEEP            directory to keep both JSON files in                                      default: a temp dir
#
# Needs bench/.venv (bash bench/setup.sh). The ratio columns are candle time / torch time: < 1 means candle is faster.
# Cases where either side saw other processes use > 10 % of the machine are marked CONTENDED; do not quote those.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
REPEAT=${REPEAT:-5}
CORESET_SELECT=${CORESET_SELECT:-1000}
WAIT_IDLE=${WAIT_IDLE:-120}
OUT=${OUT:-bench/results/ratios-$(date +%F).md}
KEEP=${KEEP:-$(mktemp -d)}
PY=bench/.venv/bin/python
[ -x "$PY" ] || { echo "bench/.venv missing: run bash bench/setup.sh" >&2; exit 2; }
mkdir -p "$KEEP" "$(dirname "$OUT")"

echo "== building the Rust bench (release)" >&2
cargo bench -p kestrel-vision --bench inference --no-run >&2

echo "== torch ($THREADS threads)" >&2
"$PY" bench/torch_bench.py --threads "$THREADS" --repeat "$REPEAT" --coreset-select "$CORESET_SELECT" \
    --wait-idle "$WAIT_IDLE" --retry-contended 2 \
    --only r18_l123 --only wrn50_l123 --only knn_torch_addmm_chunk8192 --only coreset_torch \
    --json "$KEEP/torch.json" >&2

echo "== candle ($THREADS rayon threads)" >&2
RAYON_NUM_THREADS=$THREADS cargo bench -q -p kestrel-vision --bench inference -- \
    --repeat "$REPEAT" --coreset-select "$CORESET_SELECT" --wait-idle "$WAIT_IDLE" \
    --json "$KEEP/rust.json" >/dev/null

python3 - "$KEEP/torch.json" "$KEEP/rust.json" "$OUT" <<'PYEOF'
import datetime, json, sys

tpath, rpath, out = sys.argv[1:4]
t, r = (json.load(open(p)) for p in (tpath, rpath))
T, R = t["results"], r["results"]
LIMIT = 0.10


def cell(res, key):
    v = res.get(key)
    return (v["median_ms"], v.get("other_cpu_frac", 0.0)) if v else (None, 0.0)


def ms(x):
    return "–" if x is None else f"{x:.1f}"


def ratio(a, b):
    return "–" if a is None or b is None else f"**{a / b:.2f}**"


rows = []
for name, label in (("r18", "ResNet-18"), ("wrn50", "Wide-ResNet-50-2")):
    for b in (1, 8):
        key = f"{name}_l123_b{b}"
        tt, tc = cell(T, key)
        st, sc = cell(R, key + "_stock")
        ft, fc = cell(R, key)
        flag = max(tc, sc, fc) > LIMIT
        rows.append((f"{label} → layer3, {b}×3×256×256", tt, st, ft, flag))
tt, tc = cell(T, "knn_torch_addmm_chunk8192")
ft, fc = cell(R, "knn_patchcore_nearest")
rows.append(("PatchCore kNN, 4096 × 384 vs 50,000 (torch addmm, chunks of 8192)", tt, None, ft, max(tc, fc) > LIMIT))
tt, tc = cell(T, "coreset_torch")
ft, fc = cell(R, "coreset_greedy")
sel = R.get("coreset_greedy", {}).get("select") or T.get("coreset_torch", {}).get("select")
rows.append((f"greedy coreset, 100k × 384, {sel} steps", tt, None, ft, max(tc, fc) > LIMIT))

lines = []
tm, rm = t.get("meta", {}), r.get("meta", {})
lines.append(f"# candle vs PyTorch, {datetime.date.today().isoformat()}")
lines.append("")
lines.append(f"Produced by `bench/compare.sh`: `bench/torch_bench.py` then `cargo bench -p kestrel-vision --bench "
             f"inference`, back to back on the same machine. {tm.get('threads')} threads each "
             f"(torch `set_num_threads`, `RAYON_NUM_THREADS`). CPU: {rm.get('machine', {}).get('cpu', '?')}. "
             f"torch {tm.get('torch', '?')}, candle {rm.get('candle', '?')}, f32. Medians of "
             f"{R.get('r18_l123_b1', {}).get('repeat', '?')} runs after a warm-up. Load average at the start: "
             f"torch {tm.get('loadavg_start')}, candle {rm.get('loadavg_start')}.")
lines.append("")
lines.append("Ratios are candle time / torch time (< 1: candle faster); the VM is noisy, read them as ±15 %. "
             "*stock* = the folded backbone through candle's `conv2d` and elementwise ops "
             "(`ConvImpl::Candle`); *fused* = `kestrel_vision::conv` (the default).")
lines.append("")
lines.append("| workload | torch ms | candle stock ms | candle fused ms | stock / torch | fused / torch |")
lines.append("|---|---:|---:|---:|---:|---:|")
for label, tt, st, ft, flag in rows:
    lines.append(f"| {label}{' (CONTENDED)' if flag else ''} | {ms(tt)} | {ms(st)} | {ms(ft)} | "
                 f"{ratio(st, tt)} | {ratio(ft, tt)} |")
c = R.get("coreset_greedy", {})
tc = T.get("coreset_torch", {})
if c and tc and c.get("select") != c.get("full_select"):
    full = c.get("full_select", 10000)
    lines.append("")
    lines.append(f"Coreset extrapolated linearly to the full 10 % ({full} steps; each step is one pass over the "
                 f"data, so time is linear in steps): torch ≈ {tc['median_ms'] / tc['select'] * full / 1000:.1f} s, "
                 f"candle ≈ {c['median_ms'] / c['select'] * full / 1000:.1f} s (extrapolated, not measured).")
contended = [k for k, v in list(T.items()) + list(R.items()) if v.get("other_cpu_frac", 0) > LIMIT]
lines.append("")
lines.append("Contended cases (other processes > 10 % of the machine during the timed runs): "
             + (", ".join(sorted(set(contended))) if contended else "none") + ".")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
print(f"wrote {out}", file=sys.stderr)
PYEOF
