use super::*;
use crate::bridge::frame::FrameCodec;
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
