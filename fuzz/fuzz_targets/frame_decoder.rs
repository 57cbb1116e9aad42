//! Arbitrary bytes as the records of a session and as a message's plaintext: framing,
//! record opening, chunking and the MessagePack message decoder (see
//! `om::wire::fuzz::fuzz_frame`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = om::wire::fuzz_frame(data);
    let _ = om::api::fuzz_options(data);
});
