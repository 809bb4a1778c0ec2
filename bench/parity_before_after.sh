#!/usr/bin/env bash
# Behaviour unchanged? Fit PaDiM and PatchCore on one category with one kestrel binary, evaluate with heatmaps, and
# keep everything under OUT/LABEL; run it once per binary, then compare the two trees:
#
#   KESTREL=/path/to/old/kestrel bash bench/parity_before_after.sh before
#   KESTREL=target/release/kestrel bash bench/parity_before_after.sh after
#   bash bench/parity_before_after.sh --compare before after
#
# Compared: the eval JSON metrics (image/pixel AUROC, AUPRO, F1, threshold), every image score (scores.csv), every
# anomaly map (.npy, byte for byte) and the fitted threshold. Environment: DATA (../shared/data/mtd), CATEGORY
# (magnetic_tile), ARCH (resnet18_narrow), SEED (0), OUT (target/parity).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/parity}
if [ "${1:-}" = "--compare" ]; then
  a="$OUT/${2:?}"; b="$OUT/${3:?}"
  status=0
  for d in padim patchcore; do
    python3 - "$a/$d.eval.json" "$b/$d.eval.json" "$a/$d.fit.json" "$b/$d.fit.json" <<'PYEOF' || status=1
import json, sys
ea, eb, fa, fb = (json.load(open(p)) for p in sys.argv[1:5])
keys = ["image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold", "images"]
for k in keys:
    print(f"  {k:12} {ea.get(k)!r:>22} {eb.get(k)!r:>22} {'same' if ea.get(k) == eb.get(k) else 'DIFFERENT'}")
print(f"  {'fit thresh':12} {fa.get('threshold')!r:>22} {fb.get('threshold')!r:>22} {'same' if fa.get('threshold') == fb.get('threshold') else 'DIFFERENT'}")
sys.exit(0 if all(ea.get(k) == eb.get(k) for k in keys) and fa.get("threshold") == fb.get("threshold") else 1)
PYEOF
    if cmp -s "$a/$d.heat/"*/scores.csv "$b/$d.heat/"*/scores.csv; then echo "  $d scores.csv identical"; else echo "  $d scores.csv DIFFERENT"; status=1; fi
    n=0; diff=0
    for f in "$a/$d.heat/"*/maps/*.npy; do
      n=$((n+1)); g="$b/$d.heat/${f#$a/$d.heat/}"
      cmp -s "$f" "$g" || diff=$((diff+1))
    done
    echo "  $d maps: $n compared, $diff differ"; [ "$diff" = 0 ] || status=1
  done
  exit $status
fi
LABEL=${1:?usage: parity_before_after.sh LABEL | --compare A B}
KESTREL=${KESTREL:-target/release/kestrel}
DATA=${DATA:-../shared/data/mtd}
CATEGORY=${CATEGORY:-magnetic_tile}
ARCH=${ARCH:-resnet18_narrow}
SEED=${SEED:-0}
dir="$OUT/$LABEL"
rm -rf "$dir"; mkdir -p "$dir"
for d in padim patchcore; do
  "$KESTREL" fit --data "$DATA" --category "$CATEGORY" --arch "$ARCH" --seed "$SEED" --coreset-ratio 0.01 \
    --detector "$d" -o "$dir/$d" --json > "$dir/$d.fit.json"
  "$KESTREL" eval --model "$dir/$d" --data "$DATA" --heatmaps "$dir/$d.heat" --json > "$dir/$d.eval.json"
  echo "$LABEL $d: $(cat "$dir/$d.eval.json")"
done
