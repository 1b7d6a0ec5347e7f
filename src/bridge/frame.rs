//! Frames on the bridge: how bytes on a TCP (or TLS) stream become whole messages.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     length (u32, big-endian)                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  kind (u8)    |  body (length - 1 bytes) ...                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! `length` counts the kind byte and the body, never the prefix itself, and is at
//! least 1. It is checked against the connection's maximum as soon as its four
//! bytes have arrived: [`HANDSHAKE_MAX_FRAME`] (4 KiB) until the peer has
//! authenticated, then [`DEFAULT_MAX_FRAME`] (16 MiB) unless `bridge.max_frame`
//! says otherwise. A peer announcing more gets its connection closed. Nothing is
//! ever reserved from an announced length, even one under the maximum: the read
//! buffer grows only as the body's bytes actually arrive, so a peer that announces
//! 16 MiB and goes silent costs what it sent, not 16 MiB. The protocol version is
//! agreed once, in the handshake (see `wire`), not repeated per frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The largest frame accepted unless configured otherwise: 16 MiB.
pub use crate::config::DEFAULT_MAX_FRAME;

/// The largest frame accepted before the peer has proved the cluster secret:
/// 4 KiB, ample for a hello, a proof or a refusal.
pub const HANDSHAKE_MAX_FRAME: usize = 4096;

/// Bytes before the body: the length prefix and the kind.
pub const HEADER_LEN: usize = 5;

/// One whole message off the wire: its kind and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the body holds (see `wire::Kind`).
    pub kind: u8,
    /// The body, without the kind byte.
    pub body: Bytes,
}

/// Why a stream of frames cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the maximum.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The connection's maximum.
        max: usize,
    },
    /// A length prefix of 0: not even a kind byte.
    #[error("empty frame: a length of 0 has no kind byte")]
    Empty,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes of it arrived)")]
    Truncated(usize),
    /// The stream itself failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into [`Frame`]s and writes frames with their prefix.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec refusing frames longer than `max` bytes (kind and body).
    pub fn new(max: usize) -> Self {
        FrameCodec { max: max.max(1) }
    }

    /// The largest frame this codec accepts.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Changes the largest frame accepted from now on (the handshake lowers it
    /// until the peer has authenticated).
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(prefix) = src.get(..4) else {
            return Ok(None);
        };
        let announced = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let len = usize::try_from(announced).unwrap_or(usize::MAX);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::TooLong { len, max: self.max });
        }
        if src.len().saturating_sub(4) < len {
            // No reservation for the rest: the caller's buffer grows as bytes
            // arrive, so an announced length costs nothing until it is sent.
            return Ok(None);
        }
        src.advance(4);
        let mut body = src.split_to(len);
        let kind = body.get_u8();
        Ok(Some(Frame {
            kind,
            body: body.freeze(),
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(src.len())),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = frame.body.len().saturating_add(1);
        let prefix = u32::try_from(len)
            .ok()
            .filter(|_| len <= self.max)
            .ok_or(FrameError::TooLong { len, max: self.max })?;
        // Our own frame, already checked against the maximum.
        dst.reserve(len.saturating_add(4));
        dst.put_u32(prefix);
        dst.put_u8(frame.kind);
        dst.extend_from_slice(&frame.body);
        Ok(())
    }
}

/// Writes a frame of `kind` whose body `write` appends to `dst`, then fills in the
/// length prefix; on a body over `max` the frame is taken back out of `dst`.
pub fn encode_with(
    dst: &mut BytesMut,
    kind: u8,
    max: usize,
    write: impl FnOnce(&mut BytesMut),
) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u8(kind);
    write(dst);
    let len = dst.len().saturating_sub(start).saturating_sub(4);
    let Some(prefix) = u32::try_from(len).ok().filter(|_| len <= max) else {
        dst.truncate(start);
        return Err(FrameError::TooLong { len, max });
    };
    dst[start..start + 4].copy_from_slice(&prefix.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut buf)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let mut codec = FrameCodec::new(64);
        let mut wire = BytesMut::new();
        for (kind, body) in [(1u8, &b"hello"[..]), (2, b""), (3, &[0u8; 63][..])] {
            let frame = Frame {
                kind,
                body: Bytes::copy_from_slice(body),
            };
            codec.encode(frame, &mut wire).unwrap();
        }
        let whole = decode_all(&mut codec, &wire).unwrap();
        assert_eq!(whole.len(), 3);
        // Fed one byte at a time, the same frames come out.
        let mut buf = BytesMut::new();
        let mut trickled = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                trickled.push(frame);
            }
        }
        assert_eq!(trickled, whole);
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_any_reservation() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 7][..]);
        let before = buf.capacity();
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLong {
                len: 4_294_967_295,
                max: 1024
            })
        ));
        assert_eq!(buf.capacity(), before);
        assert!(matches!(
            decode_all(&mut codec, &[0, 0, 0, 0]),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn an_announced_length_reserves_nothing_until_its_bytes_arrive() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u32(DEFAULT_MAX_FRAME as u32);
        buf.put_u8(7);
        buf.extend_from_slice(b"first bytes");
        let before = buf.capacity();
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.capacity(), before, "capacity reserved from the prefix");
        assert_eq!(
            buf.len(),
            4 + 1 + 11,
            "the partial frame stays in the buffer"
        );
    }

    #[test]
    fn the_maximum_can_be_lowered_and_raised() {
        let mut codec = FrameCodec::new(HANDSHAKE_MAX_FRAME);
        let mut wire = BytesMut::new();
        let big = Frame {
            kind: 1,
            body: Bytes::from(vec![0u8; HANDSHAKE_MAX_FRAME]),
        };
        assert!(codec.encode(big.clone(), &mut wire).is_err());
        codec.set_max(DEFAULT_MAX_FRAME);
        codec.encode(big.clone(), &mut wire).unwrap();
        codec.set_max(HANDSHAKE_MAX_FRAME);
        assert!(matches!(
            codec.decode(&mut wire.clone()),
            Err(FrameError::TooLong { len, max: HANDSHAKE_MAX_FRAME }) if len == HANDSHAKE_MAX_FRAME + 1
        ));
        codec.set_max(DEFAULT_MAX_FRAME);
        assert_eq!(codec.decode(&mut wire).unwrap(), Some(big));
    }

    #[test]
    fn a_truncated_frame_is_an_error_at_the_end_of_the_stream() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0, 0, 0, 9, 1, 2, 3][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated(7))
        ));
    }

    #[test]
    fn encode_with_takes_an_oversized_frame_back_out() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = encode_with(&mut buf, 9, 8, |b| b.extend_from_slice(&[0; 20]));
        assert!(matches!(err, Err(FrameError::TooLong { len: 21, max: 8 })));
        assert_eq!(&buf[..], b"keep");
        encode_with(&mut buf, 9, 8, |b| b.extend_from_slice(b"abc")).unwrap();
        assert_eq!(&buf[4..], &[0, 0, 0, 4, 9, b'a', b'b', b'c']);
    }
}
