#!/usr/bin/env bash
# The test suite: unit tests, then every strategy under mpirun on loopback (CPU backend).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --release
