#!/usr/bin/env bash
# CUDA compile-and-link check without a GPU: installs the pinned CUDA wheels (setup-cuda.sh), builds `kestrel`, the
# firmware and the `cuda_parity` example with `--features cuda`, then starts the binaries against the real CUDA
# runtime libraries and the link stub in place of the driver: they must load, and asking for cuda:0 must fail cleanly
# (CUDA_ERROR_STUB_LIBRARY), not crash. What this does and does not prove: docs/cuda.md.
#
# .ci/run starts it in the background at the beginning, because nearly all of its time is nvcc compiling candle's
# kernels on one or two cores. Its own target dir (default target/cuda-check): a cargo build in the main target dir
# would wait for the foreground steps' lock. Fine to run by hand; each phase prints its time.
set -euo pipefail
cd "$(dirname "$0")/../.."

export CARGO_TARGET_DIR="${CUDA_CHECK_TARGET_DIR:-target/cuda-check}"
# candle-kernels' build script runs this many nvcc processes at once (cudaforge; default: half the cores).
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
phase() { echo "== cuda-check [${SECONDS}s] $*"; }

phase "setup-cuda (pinned CUDA wheels, link stub)"
eval "$(./scripts/ci/setup-cuda.sh)"

phase "cargo build --profile cuda-check --features cuda: kestrel, kestrel-edge, example cuda_parity"
# One invocation, so one feature resolution: built one after the other, the edge's extra dependencies change the
# features of shared dependencies, and much of the graph (candle included) is compiled a second time.
# Profile cuda-check (Cargo.toml): unoptimised, since nothing here runs a model. Warnings are errors (registry crates
# keep their lints capped), so code behind feature = "cuda", compiled nowhere else, stays warning-free; a separate
# clippy pass would compile the whole dependency graph a second time, in check mode, for a handful of lines.
RUSTFLAGS="${RUSTFLAGS:-} -D warnings" cargo build --locked --profile cuda-check -p kestrel-host -p kestrel-edge \
  -p kestrel-vision --features kestrel-host/cuda,kestrel-edge/cuda,kestrel-vision/cuda --bins --example cuda_parity

phase "the CUDA binaries start without a GPU"
# The binaries need libcuda.so.1 to start at all; here that is the link stub, under the name the loader looks for,
# in a directory of its own (lib/stubs itself must never be on a GPU machine's library path).
driver="$(mktemp -d)"
trap 'rm -rf "$driver"' EXIT
ln -s "$CUDA_HOME/lib/stubs/libcuda.so" "$driver/libcuda.so.1"
export LD_LIBRARY_PATH="$KESTREL_CUDA_LIB:$driver"
bin="$CARGO_TARGET_DIR/cuda-check"
"$bin/kestrel" --version
"$bin/kestrel-edge" --version
if out="$("$bin/kestrel" pretrain fractal --preset tiny --steps 1 --device cuda:0 -o "$driver/w.safetensors" 2>&1)"; then
  echo "kestrel --device cuda:0 succeeded against the stub driver: $out" >&2
  exit 1
fi
grep -q 'cannot open cuda:0' <<<"$out" && grep -q 'CUDA_ERROR_STUB_LIBRARY' <<<"$out" ||
  { echo "unexpected failure of kestrel --device cuda:0: $out" >&2; exit 1; }
echo "kestrel --device cuda:0 without a driver: $(head -n 1 <<<"$out")"
"$bin/examples/cuda_parity" | tee "$driver/parity.txt"
grep -q '^skipped: cannot open cuda:0' "$driver/parity.txt"
phase "done"
