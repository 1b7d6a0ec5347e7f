//! Feeds arbitrary bytes to the bridge's frame decoder, in chunks the input itself
//! chooses, and every frame it yields to the wire message parser. Any panic, or a
//! frame over the codec's maximum, is a finding.

#![no_main]

use bytes::BytesMut;
use colony::bridge::frame::{FrameCodec, FrameError};
use colony::bridge::wire::Message;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// A small maximum, so that both accepted and oversized prefixes are reachable.
const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size the rest arrives in (1..=256 bytes).
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut codec = FrameCodec::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.body.len() < MAX_FRAME, "frame over the maximum");
                    let _ = Message::decode(frame);
                }
                Ok(None) => break,
                Err(e) => return check(e),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.body.len() < MAX_FRAME, "frame over the maximum");
                let _ = Message::decode(frame);
            }
            Ok(None) => {
                assert!(buf.is_empty(), "decode_eof left bytes behind");
                return;
            }
            Err(e) => return check(e),
        }
    }
});

/// Decoding a buffer can fail only on what the bytes say, never with I/O.
fn check(error: FrameError) {
    assert!(!matches!(error, FrameError::Io(_)), "I/O error: {error}");
}
