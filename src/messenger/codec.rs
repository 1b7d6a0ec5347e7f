//! messenger's frames: JSON text ended by a `\0` byte, read into one buffer
//! per connection and refused past a maximum length before it is all buffered.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// Splits `\0`-terminated messages off a connection's bytes.
#[derive(Debug)]
pub(crate) struct NulCodec {
    max: usize,
    /// Bytes of the buffer already searched for the terminator.
    searched: usize,
}

/// A message longer than the connection allows.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("a message is longer than {0} bytes")]
    TooLong(usize),
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
}

impl NulCodec {
    /// A codec refusing messages longer than `max` bytes.
    pub(crate) fn new(max: usize) -> NulCodec {
        NulCodec { max, searched: 0 }
    }
}

impl Decoder for NulCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let from = self.searched.min(src.len());
        match src[from..].iter().position(|&b| b == 0) {
            Some(at) => {
                let end = from + at;
                self.searched = 0;
                if end > self.max {
                    return Err(CodecError::TooLong(self.max));
                }
                let message = src.split_to(end + 1).freeze();
                Ok(Some(message.slice(..end)))
            }
            None => {
                self.searched = src.len();
                if src.len() > self.max {
                    return Err(CodecError::TooLong(self.max));
                }
                Ok(None)
            }
        }
    }
}

/// `message` as a frame: the text and its `\0`.
pub(crate) fn frame(mut message: Vec<u8>) -> Bytes {
    message.push(0);
    Bytes::from(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_on_nul_whatever_the_reads_and_long_ones_are_refused() {
        let mut codec = NulCodec::new(16);
        let mut buf = BytesMut::from(&b"{\"a\":1}\0{\"b\""[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"{\"a\":1}"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b":2}\0\0");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"{\"b\":2}"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b""[..]);
        assert!(buf.is_empty());

        let mut buf = BytesMut::from(&[b'x'; 17][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::TooLong(16))
        ));
        let mut codec = NulCodec::new(16);
        let mut buf = BytesMut::from(&b"0123456789abcdefg\0"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::TooLong(16))
        ));
    }
}
