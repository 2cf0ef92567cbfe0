#!/usr/bin/env bash
# Benchmarks: nodelet against containerd + runc (Debian's packages), same
# work in the same run; prints medians and ratios. Not part of the test run.
#   bench.sh [images SMALL_RUNS BIG_RUNS]
#   bench.sh pods [RUNS]     pod/container lifecycle and memory per pod
#   bench.sh cni [RUNS]      CNI ADD/DEL: nodelet-bridge in-process against
#                            the reference bridge + host-local + portmap
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
cargo build --release -p nodelet -p nodelet-integration
what="${1:-images}"
shift || true
case "$what" in
  images) exec target/release/bench-images "$@" ;;
  pods) exec target/release/bench-pods "$@" ;;
  cni) exec target/release/bench-cni "$@" ;;
  *) echo "unknown benchmark $what" >&2; exit 2 ;;
esac
