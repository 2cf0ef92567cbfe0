#!/usr/bin/env bash
# Build the cargo-fuzz targets in fuzz/ once, then run each for the given
# number of seconds, one after the other, from its committed seed corpus.
#
#   scripts/fuzz.sh            30 s per target (what CI runs)
#   scripts/fuzz.sh 3600       an hour per target, by hand
#   scripts/fuzz.sh 600 spdy_ws layer_unpack    only these targets
#
# Works on a stable toolchain: cargo-fuzz is installed from crates.io when
# missing, and RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z flags it
# passes (sanitizer, coverage instrumentation). FUZZ_SANITIZER=none skips
# AddressSanitizer (about twice the executions per second).
#
# New inputs found go to fuzz/target/corpus/<target> (not committed; the
# seeds in fuzz/corpus/<target> are only read). A crash, panic, timeout or
# out-of-memory leaves its input in fuzz/artifacts/<target>/ and makes the
# script fail after all targets have run; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# (from fuzz/), then turn it into a unit test next to the code it broke.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-30}
shift || true
sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

# Default profile: optimised, with debug assertions and overflow checks.
# FUZZ_DEV=1 builds unoptimised instead: about half the build time, fewer
# executions per second (what CI uses for its short runs).
build_args=(--sanitizer "$sanitizer")
if [[ ${FUZZ_DEV:-0} == 1 ]]; then
  build_args+=(--dev)
fi
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo fuzz list)
fi
start=$SECONDS
cargo fuzz build "${build_args[@]}"
echo "fuzz: built in $((SECONDS - start)) s; ${secs} s for each of: ${targets[*]}"

failed=()
for t in "${targets[@]}"; do
  work="target/corpus/$t"
  mkdir -p "$work" "corpus/$t"
  echo "=== fuzz $t (${secs} s)"
  # -timeout: one input running 10 s counts as a hang; -rss_limit_mb: a
  # leak or a huge allocation counts as a crash. The first corpus directory
  # receives new inputs, the seeds are read only.
  if ! cargo fuzz run "${build_args[@]}" "$t" "$work" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    2>&1 | { grep -Ev '^#[0-9]+.*(NEW|REDUCE|pulse)|NEW_FUNC|^"|dictionary' || true; }; then
    failed+=("$t")
  fi
done
echo "fuzz: done in $((SECONDS - start)) s"
if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
