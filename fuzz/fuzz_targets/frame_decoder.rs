//! Arbitrary bytes into the frame layer: stream framing, header parsing, decryption and
//! `Keyring::open` (see `om::wire::fuzz::fuzz_frame`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = om::wire::fuzz_frame(data);
});
