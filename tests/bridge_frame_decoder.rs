//! Properties of the bridge's frame codec and message parser under arbitrary input:
//! no byte stream makes them panic, frames survive any chunking, and an oversized
//! length prefix is refused before any buffer grows.

use bytes::{BufMut, Bytes, BytesMut};
use colony::bridge::frame::{Frame, FrameCodec, FrameError};
use colony::bridge::wire::{self, Message};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

/// Maxima the properties run under: tiny (most prefixes are too long), small, default.
fn max_frame() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..64,
        64usize..8192,
        Just(colony::bridge::frame::DEFAULT_MAX_FRAME)
    ]
}

/// `bytes` cut at the (sorted, deduplicated) offsets in `cuts`.
fn chunks(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

/// What feeding a byte stream to the codec produced.
#[derive(Debug)]
struct Decoded {
    frames: Vec<Frame>,
    error: Option<FrameError>,
}

/// Feeds `pieces` one after the other, decoding after each as much as possible,
/// then calls `decode_eof` until it yields nothing. Stops at the first error.
fn decode_stream(codec: &mut FrameCodec, pieces: &[Vec<u8>]) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => {
                    return Decoded {
                        frames,
                        error: Some(error),
                    }
                }
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => {
                assert!(
                    buf.is_empty(),
                    "decode_eof ended with {} bytes left",
                    buf.len()
                );
                return Decoded {
                    frames,
                    error: None,
                };
            }
            Err(error) => {
                return Decoded {
                    frames,
                    error: Some(error),
                }
            }
        }
    }
}

/// Every frame the codec gives out respects the maximum, and no error is I/O
/// (nothing here does any).
fn check_decoded(codec: &FrameCodec, decoded: &Decoded) {
    for frame in &decoded.frames {
        // The kind byte and the body fit the maximum.
        assert!(frame.body.len() < codec.max(), "frame over max: {frame:?}");
        // Whatever a peer sends, parsing the frame is an error at worst.
        let _ = Message::decode(frame.clone());
    }
    match &decoded.error {
        None
        | Some(FrameError::Empty)
        | Some(FrameError::Truncated(_))
        | Some(FrameError::TooLong { .. }) => {}
        Some(FrameError::Io(e)) => panic!("an I/O error from a buffer: {e}"),
    }
    if let Some(FrameError::TooLong { len, max }) = decoded.error {
        assert_eq!(max, codec.max());
        assert!(len > max, "TooLong for {len} <= {max}");
    }
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    (any::<u8>(), vec(any::<u8>(), 0..4096)).prop_map(|(kind, body)| Frame {
        kind,
        body: Bytes::from(body),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) Arbitrary bytes, arbitrarily chunked, never panic the decoder and fail
    /// only with a framing error.
    #[test]
    fn arbitrary_bytes_never_panic(
        max in max_frame(),
        bytes in vec(any::<u8>(), 0..2048),
        cuts in vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let mut codec = FrameCodec::new(max);
        let decoded = decode_stream(&mut codec, &chunks(&bytes, &cuts));
        check_decoded(&codec, &decoded);
        // The same bytes in one piece decode to the same frames and error kind:
        // chunking changes nothing.
        let whole = decode_stream(&mut FrameCodec::new(max), std::slice::from_ref(&bytes));
        prop_assert_eq!(&whole.frames, &decoded.frames);
        prop_assert_eq!(
            whole.error.as_ref().map(ToString::to_string),
            decoded.error.as_ref().map(ToString::to_string)
        );
    }

    /// (a) Byte streams that mostly look like frames (plausible prefixes, then
    /// garbage), so the decoder gets past the first prefix.
    #[test]
    fn plausible_prefixes_with_garbage_never_panic(
        parts in vec((0u32..300, vec(any::<u8>(), 0..300)), 0..8),
        cuts in vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let mut bytes = Vec::new();
        for (len, body) in &parts {
            bytes.put_u32(*len);
            bytes.extend_from_slice(body);
        }
        let mut codec = FrameCodec::new(256);
        let decoded = decode_stream(&mut codec, &chunks(&bytes, &cuts));
        check_decoded(&codec, &decoded);
    }

    /// (b) Frames encoded then decoded in arbitrary chunks come back exactly.
    #[test]
    fn frames_round_trip_through_any_chunking(
        frames in vec(frame_strategy(), 0..8),
        cuts in vec(any::<prop::sample::Index>(), 0..32),
    ) {
        let mut codec = FrameCodec::new(8192);
        let mut wire = BytesMut::new();
        for frame in &frames {
            codec.encode(frame.clone(), &mut wire).unwrap();
        }
        let expected_len: usize = frames.iter().map(|f| 5 + f.body.len()).sum();
        prop_assert_eq!(wire.len(), expected_len);
        let decoded = decode_stream(&mut codec, &chunks(&wire, &cuts));
        prop_assert!(decoded.error.is_none(), "{:?}", decoded.error);
        prop_assert_eq!(decoded.frames, frames);
    }

    /// (b) A stream cut short after whole frames gives those frames, then
    /// `Truncated` with the count of bytes that did arrive.
    #[test]
    fn a_stream_cut_inside_a_frame_is_truncated(
        frames in vec(frame_strategy(), 1..6),
        cut in any::<prop::sample::Index>(),
        chunking in vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut codec = FrameCodec::new(8192);
        let mut wire = BytesMut::new();
        let mut ends = Vec::new();
        for frame in &frames {
            codec.encode(frame.clone(), &mut wire).unwrap();
            ends.push(wire.len());
        }
        let at = cut.index(wire.len());
        let whole = ends.iter().take_while(|end| **end <= at).count();
        let start = if whole == 0 { 0 } else { ends[whole - 1] };
        let decoded = decode_stream(&mut codec, &chunks(&wire[..at], &chunking));
        prop_assert_eq!(&decoded.frames[..], &frames[..whole]);
        if at == start {
            prop_assert!(decoded.error.is_none(), "{:?}", decoded.error);
        } else {
            prop_assert!(
                matches!(decoded.error, Some(FrameError::Truncated(n)) if n == at - start),
                "{:?}", decoded.error
            );
        }
    }

    /// (c) A prefix above the maximum is `TooLong` without the buffer growing,
    /// however many bytes follow it.
    #[test]
    fn an_oversized_prefix_is_refused_before_allocating(
        max in 1usize..(1 << 20),
        excess in 1u64..=u64::from(u32::MAX),
        tail in vec(any::<u8>(), 0..64),
    ) {
        let len = (max as u64 + excess).min(u64::from(u32::MAX));
        prop_assume!(len > max as u64);
        let mut buf = BytesMut::with_capacity(4 + tail.len());
        buf.put_u32(len as u32);
        buf.extend_from_slice(&tail);
        let capacity = buf.capacity();
        let mut codec = FrameCodec::new(max);
        match codec.decode(&mut buf) {
            Err(FrameError::TooLong { len: l, max: m }) => {
                prop_assert_eq!(l as u64, len);
                prop_assert_eq!(m, max);
            }
            other => prop_assert!(false, "expected TooLong, got {:?}", other),
        }
        prop_assert_eq!(buf.capacity(), capacity);
        prop_assert_eq!(buf.len(), 4 + tail.len());
        let at_eof = codec.decode_eof(&mut buf);
        let too_long = matches!(at_eof, Err(FrameError::TooLong { .. }));
        prop_assert!(too_long, "decode_eof gave {:?}", at_eof);
        prop_assert_eq!(buf.capacity(), capacity);
    }

    /// `Message::decode` never panics on any body of any kind, and the kinds it
    /// knows parse into the matching variant or an error.
    #[test]
    fn message_decode_never_panics(
        kind in prop_oneof![1u8..=4, any::<u8>()],
        body in vec(any::<u8>(), 0..512),
    ) {
        let result = Message::decode(Frame { kind, body: Bytes::from(body) });
        match (kind, &result) {
            (wire::CONTROL, Ok(Message::Control(_)))
            | (wire::REQUEST, Ok(Message::Request(_)))
            | (wire::REPLY, Ok(Message::Reply(_)))
            | (wire::HEARTBEAT, Ok(Message::Heartbeat))
            | (wire::CLUSTER, Ok(Message::Cluster(_)))
            | (_, Err(_)) => {}
            (kind, Ok(other)) => prop_assert!(false, "kind {} parsed as {:?}", kind, other),
        }
        if !(wire::CONTROL..=wire::HEARTBEAT).contains(&kind) && kind != wire::CLUSTER {
            prop_assert!(result.is_err());
        }
    }

    /// Request bodies with a valid fixed header and arbitrary string lengths and
    /// contents exercise the variable part of the request parser.
    #[test]
    fn request_bodies_with_arbitrary_strings_never_panic(
        head in vec(any::<u8>(), 17),
        service_len in prop_oneof![0u16..64, any::<u16>()],
        rest in vec(any::<u8>(), 0..256),
    ) {
        let mut body = head;
        body.put_u16(service_len);
        body.extend_from_slice(&rest);
        let _ = Message::decode(Frame { kind: wire::REQUEST, body: Bytes::from(body) });
    }

    /// Control bodies that are JSON of the right shape with arbitrary strings.
    #[test]
    fn control_json_with_arbitrary_fields_never_panics(
        ty in prop_oneof![
            prop::sample::select(vec![
                "hello", "proof", "welcome", "refused", "join", "members",
                "status_request", "status_reply", "kill", "kill_reply",
            ])
            .prop_map(String::from),
            ".*",
        ],
        version in any::<i64>(),
        text in ".*",
    ) {
        let json = serde_json::json!({
            "type": ty, "version": version, "node": text, "nonce": text, "proof": text,
            "reason": text, "id": version, "members": [], "status": {},
        });
        let body = Bytes::from(serde_json::to_vec(&json).unwrap());
        let _ = Message::decode(Frame { kind: wire::CONTROL, body });
    }
}

/// Frames whose decoded requests and replies round-trip through `Message::decode`.
#[test]
fn encoded_wire_messages_decode_to_themselves() {
    let request = wire::RequestFrame {
        id: u64::MAX,
        timeout_ms: 1,
        flags: wire::ONE_WAY | wire::TO_WORKER,
        worker: 7,
        trace: Some(colony::TraceContext::new()),
        service: "calc".into(),
        subject: "ädd".into(),
        payload: Bytes::from_static(b"{}"),
    };
    let mut buf = BytesMut::new();
    request.encode(&mut buf, 1024).unwrap();
    wire::encode_heartbeat(&mut buf);
    let decoded = decode_stream(&mut FrameCodec::new(1024), &[buf.to_vec()]);
    assert!(decoded.error.is_none(), "{:?}", decoded.error);
    assert_eq!(decoded.frames.len(), 2);
    match Message::decode(decoded.frames[0].clone()).unwrap() {
        Message::Request(back) => assert_eq!(back, request),
        other => panic!("not a request: {other:?}"),
    }
    assert!(matches!(
        Message::decode(decoded.frames[1].clone()).unwrap(),
        Message::Heartbeat
    ));
}
