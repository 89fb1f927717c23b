//! Bytes as the stream the host's spawn service decodes from the (hostile) guest: framing and
//! `SpawnRequest` decoding in pieces, as its reader does; a decoded request re-encodes to the
//! same message, and nothing panics or buffers more than a frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_protocol::spawn::SpawnRequest;
use msbvm_protocol::{encode, Error, FrameDecoder, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(split).max(1);
    let mut decoder = FrameDecoder::new();
    for chunk in stream.chunks(piece) {
        decoder.push(chunk);
        loop {
            match decoder.next_message::<SpawnRequest>() {
                Ok(Some(request)) => {
                    let frame = encode(&request).expect("a decoded request encodes");
                    let mut again = FrameDecoder::new();
                    again.push(&frame);
                    assert_eq!(again.next_message::<SpawnRequest>().unwrap(), Some(request));
                }
                Ok(None) => break,
                Err(Error::Malformed(_)) => {}
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() < MAX_FRAME_LEN + 4 + piece);
    }
});
