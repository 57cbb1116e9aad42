//! Arbitrary bytes into the MessagePack envelope/request decoder, as a receiver sees them
//! after decryption (see `om::wire::fuzz::fuzz_request`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = om::wire::fuzz_request(data);
});
