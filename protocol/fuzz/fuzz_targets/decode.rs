//! Feeds arbitrary bytes to the frame decoder, at once and in chunks, and
//! checks every decoded frame survives re-encoding and re-decoding unchanged.
//! The checks live in `waping_protocol::fuzzing` so `tests/corpus.rs` replays
//! the committed corpus through exactly the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    waping_protocol::fuzzing::check_decode(data);
});
