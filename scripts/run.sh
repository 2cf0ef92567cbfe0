#!/usr/bin/env bash
# Build nodelet (release) and run the daemon with its embedded defaults:
# socket /run/nodelet/nodelet.sock, state in /var/lib/nodelet and
# /run/nodelet. Extra arguments go to `nodelet serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "nodelet runs as root: sudo $0 $*" >&2
  exit 1
fi
scripts/install-deps.sh build
cargo build --release --bin nodelet
exec target/release/nodelet serve "$@"
