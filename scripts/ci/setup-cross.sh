#!/usr/bin/env bash
# Installs what cross-building kestrel-edge for Jetson (aarch64-unknown-linux-gnu) and testing it under qemu needs,
# plus libclang for the `v4l` feature's bindgen step. Idempotent: when everything is present it only checks and
# returns in about a second. Used by .ci/run; fine to run by hand on a Debian/Ubuntu dev machine.
#
#   rustup target   aarch64-unknown-linux-gnu         (Rust std for the Jetson target)
#   apt             gcc-aarch64-linux-gnu             (linker named in .cargo/config.toml)
#                   libc6-dev-arm64-cross             (aarch64 glibc headers + crt objects; bookworm: glibc 2.36)
#                   linux-libc-dev-arm64-cross        (aarch64 kernel UAPI headers, e.g. linux/videodev2.h)
#                   qemu-user-static                  (qemu-aarch64-static runs the cross-built tests)
#                   libclang-dev                      (bindgen for v4l2-sys-mit, feature `v4l`)
#
# Jetson glibc note: JetPack 6 (L4T r36, Ubuntu 22.04) ships glibc 2.35, bookworm's cross glibc is 2.36. Binaries
# linked here may need a glibc 2.36 symbol the Jetson lacks; see boards/README.md ("glibc") for the options.
set -euo pipefail

TARGET=aarch64-unknown-linux-gnu
APT_PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross linux-libc-dev-arm64-cross qemu-user-static libclang-dev)

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  echo "setup-cross: adding Rust target $TARGET"
  rustup target add "$TARGET"
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup-cross: installing ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Fail here, with the reason, rather than deep inside a build.
command -v aarch64-linux-gnu-gcc >/dev/null || { echo "setup-cross: aarch64-linux-gnu-gcc not on PATH" >&2; exit 1; }
command -v qemu-aarch64-static >/dev/null || { echo "setup-cross: qemu-aarch64-static not on PATH" >&2; exit 1; }
[ -f /usr/aarch64-linux-gnu/include/linux/videodev2.h ] || { echo "setup-cross: aarch64 videodev2.h missing" >&2; exit 1; }
echo "setup-cross: ok ($(aarch64-linux-gnu-gcc -dumpversion) cross gcc, $(qemu-aarch64-static --version | head -n 1))"
