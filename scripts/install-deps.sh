#!/usr/bin/env bash
# Installs the Debian 12 packages maskd needs to build (and, with --test, to
# run its test suite; with --bench, the extra tools of bench/).  Idempotent:
# installs only what is missing and runs apt-get update only when something is.
set -euo pipefail

build_pkgs=(cmake gcc make pkg-config protobuf-c-compiler libprotobuf-c-dev libonnx-dev
            libopenblas-dev libmicrohttpd-dev libjansson-dev libjpeg62-turbo-dev libpng-dev)
test_pkgs=(python3-numpy python3-onnx python3-torch python3-torchvision python3-pil prometheus curl)

bench_pkgs=(wrk)

want=("${build_pkgs[@]}")
for arg in "$@"; do
  case $arg in
    --test) want+=("${test_pkgs[@]}") ;;
    --bench) want+=("${bench_pkgs[@]}") ;;
    *) echo "install-deps.sh: unknown option $arg (--test, --bench)" >&2; exit 64 ;;
  esac
done

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "maskd: installing ${missing[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
