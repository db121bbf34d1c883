#!/usr/bin/env bash
# Set up what running aarch64 artifacts needs on an x86 Debian machine, without an ARM board:
#   - the cross toolchain and qemu-user (Debian packages),
#   - an aarch64 sysroot with Python 3.11 (Debian arm64 packages, unpacked with dpkg -x),
#   - the aarch64 apache-tvm runtime wheel and numpy (PyPI, --platform manylinux_2_28_aarch64),
#   - what TVM's RPC server needs there (cloudpickle, psutil), so an aarch64 server runs under qemu.
# Idempotent: a stamp file skips the work on the second run.
set -euo pipefail
root="${1:-.arm-env}"
stamp="$root/.ready"
pip_bin="${PIP:-pip}"
aarch64_wheels() {
  "$pip_bin" install --quiet --no-deps --target "$root/site" --platform manylinux_2_28_aarch64 \
    --python-version 3.11 --only-binary=:all: "$@"
}
rpc_wheels=(cloudpickle psutil)
if [ -f "$stamp" ]; then
  # an env made before the RPC server was part of it gets its wheels now
  [ -d "$root/site/cloudpickle" ] || aarch64_wheels "${rpc_wheels[@]}"
  echo "arm env ready in $root"
  exit 0
fi
mkdir -p "$root"
root="$(cd "$root" && pwd)"

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
for tool in aarch64-linux-gnu-g++ qemu-aarch64; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ] || [ ! -d /usr/aarch64-linux-gnu/lib ]; then
  sudo_if_needed apt-get update -q
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user libc6-dev-arm64-cross
fi

# Debian arm64 packages for a minimal Python 3.11 sysroot.
lists="$root/apt-lists"
debs="$root/debs"
mkdir -p "$lists/partial" "$debs" "$root/sysroot"
apt_arm=(-oAPT::Architecture=arm64 -oAPT::Architectures=arm64 "-oDir::State::Lists=$lists")
apt-get "${apt_arm[@]}" update -q >/dev/null
pkgs=(libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libuuid1
      libcrypt1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libdb5.3 libnsl2 libtirpc3
      libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1
      python3.11-minimal libpython3.11-minimal libpython3.11-stdlib)
(cd "$debs" && apt-get "${apt_arm[@]}" download "${pkgs[@]}" >/dev/null)
for deb in "$debs"/*.deb; do dpkg -x "$deb" "$root/sysroot"; done

# aarch64 wheels: TVM runtime (same version as the host compiler), numpy, the RPC server's needs.
aarch64_wheels apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post0 numpy ml_dtypes typing_extensions "${rpc_wheels[@]}"
touch "$stamp"
echo "arm env ready in $root"
