#!/usr/bin/env bash
# Install what is missing (setup.sh, idempotent), then run the proxy peer
# benchmark. Knobs are passed through the environment, e.g.
#   ROUNDS=1 DURATION=3 TARGETS=nginx,direct bench/run.sh
set -euo pipefail
cd "$(dirname "$0")"
bash ./setup.sh
exec node run.mjs "$@"
