#!/usr/bin/env bash
# PatchCore coreset selection: kestrel's batched greedy (full run) vs PyTorch's one-centre-per-step greedy (timed
# over STEPS steps and extrapolated: every step costs the same), on random N×DIM patches, same machine, back to back.
#
#   bash bench/coreset_compare.sh                 # N=256000 DIM=307 RATIO=0.1 (the 256k×307 → 25.6k anchor)
#   N=527360 DIM=128 bash bench/coreset_compare.sh   # 515 MTD images at 256², batched's 128-dim projection
# Needs bench/.venv (bash bench/setup.sh) and target/release/kestrel (cargo build --release -p kestrel-host).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-256000}; DIM=${DIM:-307}; RATIO=${RATIO:-0.1}; STEPS=${STEPS:-300}; THREADS=${THREADS:-2}
PY=bench/.venv/bin/python
[ -x "$PY" ] || { echo "bench/.venv missing: run bash bench/setup.sh" >&2; exit 2; }
TARGET=$(python3 -c "print(max(1, int($N * $RATIO)))")
OMP_NUM_THREADS=$THREADS "$PY" - "$N" "$DIM" "$TARGET" "$STEPS" "$THREADS" <<'PYEOF'
import sys, time, torch
n, dim, target, steps, threads = map(int, sys.argv[1:6])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(3)
x = torch.rand((n, dim), generator=g) * 2 - 1
x_sq = (x * x).sum(1)
min_d = torch.full((n,), float("inf"))
idx = 0
t0 = time.perf_counter()
for _ in range(steps):
    d = x_sq - 2 * torch.mv(x, x[idx]) + x_sq[idx]
    torch.minimum(min_d, d, out=min_d)
    idx = int(torch.argmax(min_d))
per = (time.perf_counter() - t0) / steps
print(f"torch greedy: {per * 1e3:.2f} ms/step x {target} steps = {per * target:.1f} s (extrapolated from {steps} steps)")
PYEOF
RAYON_NUM_THREADS=$THREADS target/release/kestrel bench --coreset "$N" --coreset-dim "$DIM" --coreset-ratio "$RATIO" \
    --repeat 1 --warmup 0 2>/dev/null | grep coreset
