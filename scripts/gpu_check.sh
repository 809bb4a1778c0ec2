#!/usr/bin/env bash
# GPU smoke check for a `kestrel` built with `--features cuda`, on a machine WITH an NVIDIA GPU and driver. About a
# minute of work on a current GPU and a multi-core CPU. It checks, in order:
#   1. the device: nvidia-smi sees a GPU (name, driver, compute capability) and the binary's libraries resolve;
#   2. backbone forward parity CPU vs CUDA (max |Δ| per stage, ResNet-18 and Wide-ResNet-50-2, folded and unfolded)
#      with the `cuda_parity` example, when its binary is given (see below);
#   3. a few pretraining steps (`kestrel pretrain fractal --preset tiny --steps N`) on the GPU and on the CPU;
#   4. `kestrel demo` on the GPU (synthetic product, PaDiM and PatchCore fit + eval), then the same PaDiM fit + eval
#      on the CPU: the metrics must agree;
#   5. score parity through the CLI: the CPU-fitted PaDiM model scores the test images with `kestrel predict` on
#      both devices, max |Δ score|;
# and prints the timings of both devices side by side. Exit status 0 when everything ran and agreed.
#
# NOT RUN YET: no GPU was available where this script was written; CI only compiles and links the CUDA build
# (docs/cuda.md). Expect to adjust it on first contact with a real GPU.
#
# Build (anywhere with the CUDA toolkit, or with scripts/ci/setup-cuda.sh; set CUDA_COMPUTE_CAP to the GPU's
# compute capability, e.g. 90 for H100, 89 for L4/RTX 40xx, 87 for Jetson Orin, so the statically compiled kernels
# match it):
#   eval "$(scripts/ci/setup-cuda.sh)"
#   cargo build --release -p kestrel-host --features cuda --bin kestrel
#   cargo build --release -p kestrel-vision --features cuda --example cuda_parity
# then, on the GPU machine (copy the two binaries; with the wheel toolkit, also its lib/ directory for
# LD_LIBRARY_PATH: libcublas, libcurand, libnvrtc and libcudart 13 must be found, libcuda comes with the driver;
# never put the toolkit's lib/stubs on LD_LIBRARY_PATH there):
#   KESTREL=path/to/kestrel PARITY=path/to/cuda_parity DEVICE=cuda:0 scripts/gpu_check.sh [WORK_DIR]
#
# The NVIDIA driver must support CUDA 13.0 or newer (driver 580+): the kernels ship as PTX that the driver compiles.
set -euo pipefail
trap 'echo "gpu_check: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

KESTREL="${KESTREL:-target/release/kestrel}"
PARITY="${PARITY:-target/release/examples/cuda_parity}"
DEVICE="${DEVICE:-cuda:0}"
STEPS="${STEPS:-20}"
WORK="${1:-$(mktemp -d -t kestrel-gpu-check.XXXXXX)}"
mkdir -p "$WORK"

step() { echo; echo "== $*"; }
die() { echo "gpu_check: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
# Value of a top-level numeric or string field in a one-line JSON object (enough for kestrel's --json lines).
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2" | head -n 1; }
declare -a TIMES=()
timed() { # label, command...: runs it, keeps its stdout in $OUT, records the wall time
  local label=$1 t0 t1
  shift
  t0=$(now)
  OUT=$("$@")
  t1=$(now)
  TIMES+=("$(printf '%-34s %8s s' "$label" "$(secs "$t0" "$t1")")")
}

step "1. device"
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver on this machine"
nvidia-smi --query-gpu=index,name,driver_version,compute_cap,memory.total --format=csv ||
  die "nvidia-smi failed: the driver cannot talk to the GPU"
nvidia-smi | sed -n 's/.*\(CUDA Version: [0-9.]*\).*/driver supports \1 (the build needs 13.0 or newer)/p'
[ -x "$KESTREL" ] || die "no kestrel binary at $KESTREL (set KESTREL=...)"
if ldd "$KESTREL" | grep -q 'not found'; then
  ldd "$KESTREL" | grep 'not found' >&2
  die "libraries missing: put the CUDA 13 runtime libraries on LD_LIBRARY_PATH (e.g. \$KESTREL_CUDA_LIB from scripts/ci/setup-cuda.sh)"
fi
ldd "$KESTREL" | grep -q 'libcuda\.so' || die "$KESTREL does not link libcuda: build it with --features cuda"
ldd "$KESTREL" | grep -q 'stubs/libcuda' && die "libcuda resolves to a link stub: remove lib/stubs from LD_LIBRARY_PATH"
echo "binary: $KESTREL; work dir: $WORK; device: $DEVICE"

step "2. backbone forward parity, CPU vs $DEVICE"
if [ -x "$PARITY" ]; then
  "$PARITY" "$DEVICE" || die "backbone parity failed"
else
  echo "skipped: no cuda_parity binary at $PARITY (set PARITY=...); step 5 still compares scores end to end"
fi

step "3. pretraining: $STEPS steps of fractal --preset tiny"
for dev in "$DEVICE" cpu; do
  timed "pretrain $STEPS steps ($dev)" "$KESTREL" pretrain fractal --preset tiny --steps "$STEPS" --seed 1 \
    --device "$dev" -o "$WORK/pretrain-${dev/:/}.safetensors" --json
  echo "$dev: loss $(field first_loss "$OUT") → $(field last_loss "$OUT"), $(field images_per_second "$OUT") images/s"
done

step "4. demo on $DEVICE (synthetic product; PaDiM and PatchCore fit + eval), then PaDiM on the CPU"
timed "demo: PaDiM + PatchCore ($DEVICE)" "$KESTREL" demo --out "$WORK/demo" --device "$DEVICE" --json
demo_padim=$(grep '"category":"widget/padim"' <<<"$OUT") || die "demo printed no PaDiM result: $OUT"
grep '"category"' <<<"$OUT"
data="$WORK/demo/data"
# The demo's PaDiM settings (host/src/commands/demo.rs), so the CPU model is the same model.
fit=(--data "$data" --category widget --arch resnet18_narrow --seed 7 --image-size 128 --detector padim)
timed "PaDiM fit (cpu)" "$KESTREL" fit "${fit[@]}" --device cpu -o "$WORK/padim-cpu" --json
timed "PaDiM eval (cpu)" "$KESTREL" eval --model "$WORK/padim-cpu" --data "$data" --device cpu --json
cpu_padim=$(grep '"category"' <<<"$OUT" | head -n 1)
echo "$cpu_padim"
status=0
for m in image_auroc pixel_auroc aupro; do
  g=$(field "$m" "$demo_padim")
  c=$(field "$m" "$cpu_padim")
  d=$(awk -v a="$g" -v b="$c" 'BEGIN { d = a - b; if (d < 0) d = -d; printf "%.4f", d }')
  ok=$(awk -v d="$d" 'BEGIN { print (d <= 0.005) ? "ok" : "DIFFERS" }')
  echo "PaDiM $m: $DEVICE $g, cpu $c, |Δ| $d $ok"
  [ "$ok" = ok ] || status=1
done

step "5. score parity: the CPU-fitted PaDiM model scoring the test images on both devices"
for dev in cpu "$DEVICE"; do
  timed "PaDiM predict ($dev)" "$KESTREL" predict --model "$WORK/padim-cpu" --device "$dev" \
    -o "$WORK/predict-${dev/:/}" --json "$data"/widget/test/*
done
if ! paste -d, "$WORK/predict-cpu/scores.csv" "$WORK/predict-${DEVICE/:/}/scores.csv" | awk -F, '
  NR == 1 { next }
  $1 != $4 { print "score files do not line up: " $1 " vs " $4; bad = 1; exit }
  { d = $2 - $5; if (d < 0) d = -d; s = $2 < 0 ? -$2 : $2; if (s > m) m = s; if (d > md) md = d; n++ }
  END {
    if (bad) exit 1
    printf "max |Δ score| %.3e (max |score| %.3f, %d images)\n", md, m, n
    if (md > 1e-3 * (m > 1 ? m : 1)) { print "scores DIFFER by more than 1e-3 relative"; exit 1 }
  }'; then
  status=1
fi

step "timings (wall, including process start and model loading)"
printf '%s\n' "${TIMES[@]}"
[ "$status" -eq 0 ] && echo "gpu check ok" || echo "gpu check: results differ (see above)"
exit "$status"
