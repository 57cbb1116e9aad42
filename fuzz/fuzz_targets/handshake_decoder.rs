//! Arbitrary bytes as a hello a node receives and as the answer a client receives
//! (see `om::wire::fuzz::fuzz_handshake`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = om::wire::fuzz_handshake(data);
});
