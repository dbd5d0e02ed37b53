#!/usr/bin/env bash
# Checks the data shipped in data/ against data/SHA256SUMS.
set -euo pipefail
cd "$(dirname "$0")/../data"
sha256sum -c --quiet SHA256SUMS && echo "data/: all checksums match"
