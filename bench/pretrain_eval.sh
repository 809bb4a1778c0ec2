#!/usr/bin/env bash
# Does a pretrained backbone help? Fit PaDiM, PatchCore (1 % coreset) and GDE with it on one category, evaluate,
# and print image AUROC, pixel AUROC and AUPRO per detector as one table row each.
#
#   bash bench/pretrain_eval.sh LABEL [WEIGHTS]      # no WEIGHTS: random init from SEED
#
# Environment: KESTREL (binary; default target/release/kestrel), DATA (default ../shared/data/mtd), CATEGORY
# (magnetic_tile), ARCH (resnet18_narrow), SEED (0: weights when random, PaDiM channel subset, split), OUT
# (target/pretrain-eval: models are large, keep them out of git), DETECTORS (default "padim patchcore gde"). Models and JSON reports are kept under OUT/LABEL-<detector>.
set -euo pipefail
cd "$(dirname "$0")/.."
LABEL=${1:?usage: pretrain_eval.sh LABEL [WEIGHTS]}
WEIGHTS=${2:-}
KESTREL=${KESTREL:-target/release/kestrel}
DATA=${DATA:-../shared/data/mtd}
CATEGORY=${CATEGORY:-magnetic_tile}
ARCH=${ARCH:-resnet18_narrow}
SEED=${SEED:-0}
OUT=${OUT:-target/pretrain-eval}
[ -x "$KESTREL" ] || { echo "no $KESTREL: cargo build --release -p kestrel-host" >&2; exit 2; }
mkdir -p "$OUT"
args=(--data "$DATA" --category "$CATEGORY" --arch "$ARCH" --seed "$SEED" --coreset-ratio 0.01)
[ -n "$WEIGHTS" ] && args+=(--weights "$WEIGHTS")
for d in ${DETECTORS:-padim patchcore gde}; do
  m="$OUT/$LABEL-$d"
  "$KESTREL" fit "${args[@]}" --detector "$d" -o "$m" --json > "$m.fit.json"
  "$KESTREL" eval --model "$m" --data "$DATA" --json > "$m.eval.json"
  python3 - "$LABEL" "$d" "$m.eval.json" <<'PYEOF'
import json, sys
label, det, path = sys.argv[1:4]
r = json.load(open(path))
print(f"| {label} | {det} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['aupro']:.4f} |")
PYEOF
done
