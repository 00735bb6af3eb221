#!/usr/bin/env bash
# Builds maskd (Release, build/) and runs the daemon in the foreground on the
# shipped default models (config/maskd.json: shapes-seg and shapes-det on
# 127.0.0.1:8080): the README's first set-up command.  Ctrl-C or SIGTERM drains
# and stops it.  Extra arguments go to `maskd serve` (e.g. --port 9000,
# --threads 2); MASKD_PORT, MASKD_LISTEN, ... override the file as they
# override any config.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target maskd
exec build/server/maskd serve --config config/maskd.json "$@"
