#!/usr/bin/env bash
# Install what the tests need, then run every test: formatting and lints,
# unit tests, and the privileged integration tests in integration/ (they
# start their own daemons, registries, namespaces and cgroups, and clean
# them up). Runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "the tests need root: sudo $0" >&2
  exit 1
fi
scripts/install-deps.sh test

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests run the real binary: build it first.
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast "$@"
# Fuzzing, time-boxed: every target in fuzz/ for FUZZ_SECONDS (30 s by
# default, 6 targets) after a one-off unoptimised build; a crash fails
# the run.
FUZZ_DEV=${FUZZ_DEV:-1} scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
