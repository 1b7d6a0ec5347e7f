//! Feeds arbitrary bytes to what a stranger reaches before proving the cluster
//! secret: the frame decoder at the handshake's 4 KiB limit, in chunks the input
//! itself chooses, and every frame it yields to the hello parser. Any panic, a
//! frame over the limit, a buffer grown past what arrived, or a hello accepted
//! with a name or nonce out of bounds is a finding.

#![no_main]

use bytes::BytesMut;
use colony::bridge::frame::{FrameCodec, FrameError, HANDSHAKE_MAX_FRAME};
use colony::bridge::handshake::{check_node_name, decode_hello};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size the rest arrives in (1..=256 bytes).
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut codec = FrameCodec::new(HANDSHAKE_MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut arrived = 0usize;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        arrived += piece.len();
        loop {
            let decoded = codec.decode(&mut buf);
            // Nothing is reserved from an announced length.
            assert!(
                buf.capacity() <= arrived.max(64) * 2,
                "buffer of {} bytes after {arrived} arrived",
                buf.capacity()
            );
            match decoded {
                Ok(Some(frame)) => check_frame(frame),
                Ok(None) => break,
                Err(e) => return check_error(e),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => check_frame(frame),
            Ok(None) => return assert!(buf.is_empty(), "decode_eof left bytes behind"),
            Err(e) => return check_error(e),
        }
    }
});

fn check_frame(frame: colony::bridge::frame::Frame) {
    assert!(frame.body.len() < HANDSHAKE_MAX_FRAME, "frame over the limit");
    if let Ok(hello) = decode_hello(frame) {
        assert!(check_node_name(&hello.node).is_ok(), "{:?}", hello.node);
        assert!(hello.nonce.len() <= 128, "nonce of {}", hello.nonce.len());
        assert!(hello.proof.is_none_or(|p| p.len() <= 128), "proof too long");
    }
}

/// Decoding a buffer can fail only on what the bytes say, never with I/O.
fn check_error(error: FrameError) {
    assert!(!matches!(error, FrameError::Io(_)), "I/O error: {error}");
}
