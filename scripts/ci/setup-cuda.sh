#!/usr/bin/env bash
# Installs a CUDA toolkit that is just enough to COMPILE AND LINK kestrel with `--features cuda` on a machine without
# a GPU or NVIDIA driver (CI), from pinned NVIDIA wheels on the Python package index, and prints the environment the
# build needs as `export` lines on stdout (progress goes to stderr):
#
#   eval "$(scripts/ci/setup-cuda.sh)"
#   cargo build -p kestrel-host --features cuda --locked
#
# Idempotent: the toolkit lives in a cache directory outside the repository (KESTREL_CUDA_CACHE, default
# ${XDG_CACHE_HOME:-~/.cache}/kestrel/cuda-<version>) with a stamp of the pins below; when the stamp matches, the script
# only checks and prints, in well under a second. Change a pin and the next run rebuilds the cache. Used by .ci/run;
# why the build is set up this way, and what a build made like this does and does not prove: docs/cuda.md.
#
# What the build needs, and which wheel has it (all wheels unpack into one CUDA root, site-packages/nvidia/cu13):
#   nvcc, ptxas, fatbinary, nvcc.profile   nvidia-cuda-nvcc     candle-kernels' build script; cudarc's build script
#                                                                runs `nvcc --version` to pick its CUDA API version
#   cicc + libdevice                       nvidia-nvvm          nvcc's device front end
#   crt/*.h                                nvidia-cuda-crt      headers nvcc includes into every .cu file
#   cuda.h, cuda_runtime.h, cuda_fp16.h.., nvidia-cuda-runtime  kernel headers; libcudart.so.13 (candle-kernels links
#     libcudart.so.13                                            -lcudart)
#   cub/, thrust/, cuda/std                nvidia-cuda-cccl     candle's sort kernels
#   libnvrtc.so.13                         nvidia-cuda-nvrtc    candle-core links -lnvrtc, -lcurand, -lcublas,
#   libcurand.so.10                        nvidia-curand          -lcublasLt directly (cudarc "dynamic-linking"),
#   libcublas.so.13, libcublasLt.so.13     nvidia-cublas          not through dlopen
#
# Pinned to one CUDA release (13.0 update 2) on purpose: pip mixing versions (an nvvm or crt newer than nvcc) makes
# ptxas reject the PTX it is given. 13.0 and not a newer 13.x because the kernels' PTX is then loadable by every
# CUDA 13 driver (a driver JIT-compiles PTX only up to its own CUDA version), and cudarc 0.19 supports 11.4-13.4.
#
# Two things a real toolkit has and the wheels lack, made here in <CUDA root>/lib/stubs (cudarc and nvcc both search
# that directory, as in a full toolkit):
#   - libcuda.so, the driver API. It comes with the NVIDIA driver, not the toolkit; toolkits ship a link-only stub in
#     lib/stubs, the wheels do not, and the final link fails with "unable to find library -lcuda". The stub built here
#     defines every function cuda.h (of this CUDA version) declares, each returning CUDA_ERROR_STUB_LIBRARY (34), and
#     has the driver's soname libcuda.so.1, so the binary records a dependency on libcuda.so.1 and loads the real
#     driver on a GPU machine. It is for linking only: never put lib/stubs on LD_LIBRARY_PATH of a GPU machine.
#     (Leaving the symbols unresolved with linker flags instead would link a binary with no libcuda dependency at
#     all, i.e. one that cannot work anywhere.)
#   - unversioned dev symlinks (libcublas.so -> ../libcublas.so.13, ...): `-lcublas` looks for libcublas.so, the
#     wheels carry only the versioned runtime names.
#
# Environment printed: CUDA_HOME (cudaforge's nvcc and headers, cudarc's link search), PATH (nvcc first: cudarc runs
# the `nvcc` on PATH), CUDA_COMPUTE_CAP (there is no GPU to ask; default 80, override by setting it before running
# this script) and KESTREL_CUDA_LIB (the runtime libraries, for LD_LIBRARY_PATH when running a built binary here).
set -euo pipefail

CUDA_RELEASE=13.0.2
PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-curand==10.4.0.35
  nvidia-cublas==13.1.0.3
)
# CUDA_ERROR_STUB_LIBRARY in cuda.h: "the CUDA driver that the application has loaded is a stub library".
STUB_RESULT=34

CACHE="${KESTREL_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kestrel/cuda-$CUDA_RELEASE}"
VENV="$CACHE/venv"
STAMP="$CACHE/stamp"
stamp_text="${PINS[*]} stub=$STUB_RESULT layout=1"

log() { echo "setup-cuda: $*" >&2; }
die() { log "$*"; exit 1; }

python=${PYTHON:-python3}
command -v "$python" >/dev/null || die "$python not found: the CUDA wheels are installed into a Python venv"
command -v cc >/dev/null || die "no C compiler (cc): needed for the libcuda link stub and as nvcc's host compiler"

cuda_root() {
  "$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))'
}

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$stamp_text" ]; then
  log "installing CUDA $CUDA_RELEASE wheels into $VENV"
  rm -rf "$CACHE"
  mkdir -p "$CACHE"
  "$python" -m venv "$VENV"
  # --no-deps: the list above is complete, and pip resolving the wheels' own (unpinned) dependencies is exactly
  # what mixes CUDA versions.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${PINS[@]}"
  CU="$(cuda_root)"

  stubs="$CU/lib/stubs"
  mkdir -p "$stubs"
  # Every function the driver API header declares, after its macros (cuMemAlloc -> cuMemAlloc_v2 ...): the names a
  # binding generated from this header links against.
  cc -E -P -x c -I "$CU/include" "$CU/include/cuda.h" \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' | sort -u >"$CACHE/libcuda.symbols"
  [ "$(wc -l <"$CACHE/libcuda.symbols")" -gt 300 ] || die "found too few functions in cuda.h: $CACHE/libcuda.symbols"
  {
    echo "/* Link-only stub of the CUDA driver API, generated by scripts/ci/setup-cuda.sh. */"
    while read -r f; do echo "int $f(void) { return $STUB_RESULT; }"; done <"$CACHE/libcuda.symbols"
  } >"$CACHE/libcuda-stub.c"
  cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$CACHE/libcuda-stub.c"

  for lib in "$CU"/lib/lib*.so.*; do
    name="$(basename "$lib")"
    dev="${name%%.so.*}.so"
    [ -e "$stubs/$dev" ] || ln -s "../$name" "$stubs/$dev"
  done
  echo "$stamp_text" >"$STAMP"
fi

CU="$(cuda_root)"
# Fail here, with the reason, rather than deep inside a build.
for f in bin/nvcc nvvm/bin/cicc include/cuda.h include/crt/host_defines.h include/cccl/cub/cub.cuh \
  lib/stubs/libcuda.so lib/stubs/libcudart.so lib/stubs/libnvrtc.so lib/stubs/libcurand.so lib/stubs/libcublas.so \
  lib/stubs/libcublasLt.so; do
  [ -e "$CU/$f" ] || die "$CU/$f missing; delete $CACHE and run again"
done
version="$("$CU/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
[ "$version" = "${CUDA_RELEASE%.*}" ] || die "nvcc reports CUDA '$version', expected ${CUDA_RELEASE%.*}"
log "ok (nvcc $version, CUDA root $CU)"

printf 'export CUDA_HOME=%q\n' "$CU"
printf 'export PATH=%q:"$PATH"\n' "$CU/bin"
printf 'export CUDA_COMPUTE_CAP=%q\n' "${CUDA_COMPUTE_CAP:-80}"
printf 'export KESTREL_CUDA_LIB=%q\n' "$CU/lib"
