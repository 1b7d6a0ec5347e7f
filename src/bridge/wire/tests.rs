use std::collections::BTreeMap;

use super::*;
use crate::bridge::frame::FrameCodec;
use crate::pubsub::MAX_PREFIXES;
use tokio_util::codec::Decoder;

fn one_frame(bytes: &mut BytesMut) -> Frame {
    FrameCodec::new(1 << 20).decode(bytes).unwrap().unwrap()
}

#[test]
fn requests_and_replies_round_trip() {
    let request = RequestFrame {
        id: 7,
        timeout_ms: 5000,
        flags: TO_WORKER,
        worker: 3,
        trace: None,
        service: "math".into(),
        subject: "sum".into(),
        payload: Bytes::from_static(br#"{"a":1,"b":2}"#),
    };
    let mut buf = BytesMut::new();
    request.encode(&mut buf, 1 << 20).unwrap();
    let Message::Request(back) = Message::decode(one_frame(&mut buf)).unwrap() else {
        panic!("not a request");
    };
    assert_eq!(back, request);

    let reply = ReplyFrame {
        id: 7,
        ok: false,
        payload: Bytes::from(serde_json::to_vec(&ServiceError::timeout("late")).unwrap()),
    };
    reply.encode(&mut buf, 1 << 20).unwrap();
    let Message::Reply(back) = Message::decode(one_frame(&mut buf)).unwrap() else {
        panic!("not a reply");
    };
    assert_eq!(
        back.into_result().unwrap_err(),
        ServiceError::timeout("late")
    );
}

#[test]
fn a_prefix_table_past_the_cap_is_read_only_up_to_it() {
    let table: BTreeMap<String, u32> = (0..MAX_PREFIXES + 100)
        .map(|i| (format!("p{i:06}"), 1))
        .collect();
    let json = serde_json::to_vec(&Control::Subscriptions { prefixes: table }).unwrap();
    let Control::Subscriptions { prefixes } = Control::decode(&json).unwrap() else {
        panic!("not a table");
    };
    assert_eq!(prefixes.len(), MAX_PREFIXES + 1);
    let change = Control::Subscribed {
        prefix: "a.".into(),
    };
    let json = serde_json::to_vec(&change).unwrap();
    assert_eq!(Control::decode(&json).unwrap(), change);
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    assert!(RequestFrame::decode(Bytes::from_static(&[0; 5])).is_err());
    let mut short_name = vec![0u8; 17];
    short_name.extend_from_slice(&[0, 9, b'x']);
    assert!(RequestFrame::decode(Bytes::from(short_name)).is_err());
    assert!(ReplyFrame::decode(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 1, 2])).is_err());
    assert!(Control::decode(b"{\"type\":\"nope\"}").is_err());
}

/// The body of `request` encoded, without the frame's prefix and kind.
fn request_body(request: &RequestFrame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    request.encode(&mut buf, 1 << 20).unwrap();
    one_frame(&mut buf).body.to_vec()
}

#[test]
fn a_trace_costs_nothing_untraced_and_25_bytes_traced() {
    let trace: TraceContext = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    let untraced = RequestFrame {
        id: 1,
        timeout_ms: 10,
        flags: ONE_WAY,
        worker: 0,
        trace: None,
        service: "s".into(),
        subject: "t".into(),
        payload: Bytes::from_static(b"{}"),
    };
    let traced = RequestFrame {
        trace: Some(trace),
        ..untraced.clone()
    };
    let (plain, with_trace) = (request_body(&untraced), request_body(&traced));
    // Untraced: the version-4 layout, flags as they were.
    assert_eq!(plain.len(), 8 + 4 + 1 + 4 + 2 + 1 + 2 + 1 + 2);
    assert_eq!(plain[12], ONE_WAY);
    assert_eq!(with_trace.len(), plain.len() + WIRE_LEN);
    assert_eq!(with_trace[12], ONE_WAY | TRACED);
    assert_eq!(&with_trace[17..17 + WIRE_LEN], &trace.to_bytes()[..]);
    for (body, frame) in [(plain, untraced), (with_trace.clone(), traced)] {
        assert_eq!(RequestFrame::decode(Bytes::from(body)).unwrap(), frame);
    }
    // Cut anywhere inside the trace, or with a zero trace id: malformed.
    for cut in 17..17 + WIRE_LEN {
        assert!(RequestFrame::decode(Bytes::copy_from_slice(&with_trace[..cut])).is_err());
    }
    let mut zero = with_trace.clone();
    zero[17..33].fill(0);
    assert!(RequestFrame::decode(Bytes::from(zero)).is_err());
    // Flag bits no version defines: malformed.
    for bit in [8u8, 16, 32, 64, 128] {
        let mut odd = with_trace.clone();
        odd[12] |= bit;
        assert!(RequestFrame::decode(Bytes::from(odd)).is_err(), "bit {bit}");
    }
}

#[test]
fn publications_carry_their_trace() {
    let trace = TraceContext::new();
    for trace in [None, Some(trace)] {
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, 1 << 20, "a.b", "n1", "n1/s/0", trace, b"[1]").unwrap();
        let body = one_frame(&mut buf).body;
        let back = PublishFrame::decode(body.clone()).unwrap();
        assert_eq!(back.trace, trace);
        assert_eq!(
            (back.topic.as_str(), &back.payload[..]),
            ("a.b", &b"[1]"[..])
        );
        for cut in 0..body.len() - 3 {
            assert!(
                PublishFrame::decode(body.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let mut odd = body.to_vec();
        odd[2 + 3 + 2 + 2 + 2 + 6] = 2;
        assert!(PublishFrame::decode(Bytes::from(odd)).is_err());
    }
}
