#!/bin/sh
# Runs one cargo-fuzz target on stable Rust for a bounded time.
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

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

mkdir -p "corpus-run/$target" "artifacts/$target"
# --sanitizer none: no nightly needed. -rss_limit_mb catches inputs that allocate from
# untrusted lengths; -timeout catches quadratic behaviour.
exec cargo fuzz run --sanitizer none "$target" "corpus-run/$target" "corpus/$target" -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
  -print_final_stats=1
