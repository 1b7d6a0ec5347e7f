//! The handshake's own tests: both sides with one secret or two, and hellos a
//! stranger might send.

use super::*;

async fn pair(
    a: &[u8],
    b: &[u8],
) -> (
    Result<String, HandshakeError>,
    Result<String, HandshakeError>,
) {
    let (x, y) = tokio::io::duplex(4096);
    let (sa, sb) = (Secret::new(a).unwrap(), Secret::new(b).unwrap());
    let dialer =
        async move { dial(&mut Framed::new(x, FrameCodec::default()), "dialer", &sa).await };
    let acceptor = async move {
        let mut framed = Framed::new(y, FrameCodec::default());
        let accepted = accept(&mut framed, "acceptor", &sb).await;
        if accepted.is_ok() {
            // The handshake's 4 KiB limit ends with it.
            assert_eq!(framed.codec().max(), super::super::frame::DEFAULT_MAX_FRAME);
        }
        accepted
    };
    tokio::join!(dialer, acceptor)
}

#[actix_rt::test]
async fn the_same_secret_opens_the_connection_both_ways() {
    let (d, a) = pair(b"0123456789abcdef-secret", b"0123456789abcdef-secret").await;
    assert_eq!(d.unwrap(), "acceptor");
    assert_eq!(a.unwrap(), "dialer");
}

#[actix_rt::test]
async fn a_wrong_secret_is_refused_by_the_side_that_checks_first() {
    let (d, a) = pair(b"0123456789abcdef-secret", b"0123456789abcdef-other!").await;
    // The dialer checks the acceptor's proof first and refuses it.
    assert!(
        matches!(d, Err(HandshakeError::WrongSecret { ref peer }) if peer == "acceptor"),
        "{d:?}"
    );
    assert!(
        matches!(a, Err(HandshakeError::Refused(ref why)) if why == "wrong cluster secret"),
        "{a:?}"
    );
}

#[test]
fn node_names_are_short_and_plain() {
    for good in ["m", "worker-a", "W_1.b", &"x".repeat(MAX_NODE_NAME)] {
        assert!(check_node_name(good).is_ok(), "{good}");
    }
    let long = "x".repeat(MAX_NODE_NAME + 1);
    for bad in ["", "evil\nFORGED", "a b", "é", "a/b", &long] {
        let err = check_node_name(bad).unwrap_err().to_string();
        assert!(!err.contains('\n') && err.len() < 200, "{err}");
    }
}

async fn accept_raw(hello: Frame) -> (Result<String, HandshakeError>, Option<Frame>) {
    let (x, y) = tokio::io::duplex(1 << 16);
    let secret = Secret::new(b"0123456789abcdef-secret").unwrap();
    let mut stranger = Framed::new(x, FrameCodec::default());
    stranger.send(hello).await.unwrap();
    let mut framed = Framed::new(y, FrameCodec::default());
    let accepted = accept(&mut framed, "acceptor", &secret).await;
    drop(framed);
    let answer = stranger.next().await.and_then(Result::ok);
    (accepted, answer)
}

fn hello_frame(node: &str) -> Frame {
    let hello = Control::Hello {
        version: PROTOCOL_VERSION,
        node: node.into(),
        nonce: "ab".repeat(32),
        proof: None,
    };
    Frame {
        kind: CONTROL,
        body: serde_json::to_vec(&hello).unwrap().into(),
    }
}

#[actix_rt::test]
async fn a_hello_with_a_forged_name_is_refused_without_echoing_it() {
    let (accepted, answer) = accept_raw(hello_frame("evil\nFORGED")).await;
    let err = accepted.unwrap_err().to_string();
    assert!(
        err.contains("node name") && !err.contains("FORGED"),
        "{err}"
    );
    let answer = answer.expect("the acceptor says why");
    match Control::decode(&answer.body).unwrap() {
        Control::Refused { reason } => assert!(reason.contains("node name"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[actix_rt::test]
async fn a_hello_over_4_kib_ends_the_handshake_whatever_the_configured_maximum() {
    let (accepted, _) = accept_raw(hello_frame(&"x".repeat(HANDSHAKE_MAX_FRAME))).await;
    assert!(
        matches!(
            accepted,
            Err(HandshakeError::Frame(FrameError::TooLong {
                max: HANDSHAKE_MAX_FRAME,
                ..
            }))
        ),
        "{accepted:?}"
    );
}

#[test]
fn short_secrets_are_refused_and_hex_round_trips() {
    assert!(Secret::new(b"  short \n").is_err());
    assert_eq!(
        hex_decode(&hex_encode(&[0, 1, 254, 255])).unwrap(),
        vec![0, 1, 254, 255]
    );
    assert!(hex_decode("abc").is_none());
    assert!(hex_decode("zz").is_none());
}
