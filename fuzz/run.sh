#!/bin/sh
# Runs one libFuzzer target (fuzz/fuzz_targets) on stable Rust for a bounded time.
#
#   fuzz/run.sh TARGET SECONDS      TARGET: frame_decoder | handshake_decoder
#
# The committed seeds in fuzz/corpus/TARGET are read, never written: new inputs go to
# fuzz/corpus-run/TARGET (ignored by git). A crash leaves its input in
# fuzz/artifacts/TARGET/ and makes this script exit non-zero; copy a minimized crash into
# fuzz/corpus/TARGET/ once fixed so `cargo test --test fuzz_corpus` replays it forever.
set -eu

target=${1:?usage: fuzz/run.sh TARGET SECONDS}
secs=${2:-60}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

case "$target" in
  frame_decoder|handshake_decoder) ;;
  *) echo "unknown target: $target (frame_decoder, handshake_decoder)" >&2; exit 2 ;;
esac

# What `cargo fuzz run --sanitizer none` does, without installing cargo-fuzz (building it
# took 8 minutes of every CI run): libFuzzer's coverage instrumentation is stable codegen.
# Unlike cargo-fuzz, without -Ccodegen-units=1: on two cores it doubled this build (8m40s
# against 4m40s, most of CI's time) for the same executions per second.
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
  --cfg fuzzing -Cdebug-assertions ${RUSTFLAGS:-}"
cargo build --release --config 'profile.release.debug="line-tables-only"' \
  --target "$triple" --bin "$target"

mkdir -p "corpus-run/$target" "artifacts/$target"
# -rss_limit_mb catches inputs that allocate from untrusted lengths; -timeout catches
# quadratic behaviour.
exec "target/$triple/release/$target" "corpus-run/$target" "corpus/$target" \
  -artifact_prefix="artifacts/$target/" -max_total_time="$secs" -rss_limit_mb=2048 \
  -timeout=10 -max_len=65536 -print_final_stats=1
