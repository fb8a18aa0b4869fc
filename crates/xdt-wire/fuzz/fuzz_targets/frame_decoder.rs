//! Arbitrary bytes into everything that reads peer input: the preamble, frame checks and the
//! message decoder, in a stream as central reads it. Nothing may panic or allocate beyond
//! MAX_FRAME; every decoded message must survive encode -> decode -> encode byte for byte (bytes,
//! not `==`: a peer may send NaN floats, which are valid and never equal to themselves).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xdt_wire::{Preamble, frame};

fuzz_target!(|data: &[u8]| {
    if let Some(head) = data.get(..Preamble::LEN) {
        let mut bytes = [0; Preamble::LEN];
        bytes.copy_from_slice(head);
        let _ = Preamble::decode(&bytes);
    }
    let mut rest = data;
    while let Ok(Some(len)) = frame::check(rest) {
        if let Ok(message) = frame::decode(&rest[frame::HEADER_LEN..len]) {
            let mut first = Vec::new();
            if frame::encode(&message, &mut first).is_ok() {
                let n = frame::check(&first).expect("own frame checks").expect("complete");
                let decoded = frame::decode(&first[frame::HEADER_LEN..n]).expect("own frame decodes");
                let mut second = Vec::new();
                frame::encode(&decoded, &mut second).expect("re-encodes");
                assert_eq!(first, second);
            }
        }
        rest = &rest[len..];
    }
});
