#!/usr/bin/env bash
# System packages deploykit's features need: the aarch64 cross compiler (TVM ARM builds),
# qemu-user + debootstrap (the emulated aarch64 device). Idempotent; needs root (or sudo).
set -euo pipefail
pkgs=(g++-aarch64-linux-gnu qemu-user qemu-user-binfmt debootstrap binfmt-support)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
