#!/usr/bin/env bash
# System packages deploykit's features need: the aarch64 cross compiler (TVM ARM builds),
# qemu-user + debootstrap + binfmt (the emulated aarch64 device of tools/arm_device.py), a host
# C++ compiler (TVM x86 libraries and bundle runners), headless Chromium (the HTML report test),
# the PostgreSQL server (the shared results store's tests start a throwaway cluster; only its
# binaries are needed: the package's own cluster may stay stopped), the OpenSSH server (the
# ssh:// device tests start a throwaway key-only sshd on the loopback; the system one may stay off),
# GNU time (/usr/bin/time -v: the independent peak-RSS figure of tools/bench_memory.py).
# Idempotent; needs root (or sudo).
set -euo pipefail
pkgs=(g++-aarch64-linux-gnu qemu-user qemu-user-binfmt debootstrap binfmt-support g++ chromium time
      postgresql openssh-server)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The emulated device's RPC server re-executes its aarch64 interpreter: register qemu's binfmt
# handler (containers often start without binfmt_misc mounted).
misc=/proc/sys/fs/binfmt_misc
if [ ! -e "$misc/qemu-aarch64" ]; then
  [ -e "$misc/register" ] || $SUDO mount -t binfmt_misc binfmt_misc "$misc" || true
  $SUDO update-binfmts --enable qemu-aarch64 || true
fi
