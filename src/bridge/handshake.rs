//! The handshake that opens every bridge connection: versions are agreed and each
//! side proves it holds the cluster secret, which never crosses the wire.
//!
//! ```text
//! dialer                                         acceptor
//!   Hello { version, node: D, nonce: Nd }  ───▶
//!                                          ◀───  Hello { version, node: A, nonce: Na,
//!                                                        proof: HMAC(s, "acceptor"|Nd|Na|A) }
//!   (checks the acceptor's proof)
//!   Proof { HMAC(s, "dialer"|Na|Nd|D) }    ───▶
//!                                                (checks the dialer's proof)
//!                                          ◀───  Welcome
//! ```
//!
//! Each proof covers both fresh nonces and the prover's name, so none can be
//! replayed on another connection or for another node. Proofs are compared in
//! constant time (`Mac::verify_slice`). A side that finds a wrong proof sends
//! `Refused` and closes, and both sides log why.
//!
//! Until the proofs are checked the peer is a stranger: the codec accepts frames
//! of at most [`HANDSHAKE_MAX_FRAME`] (4 KiB) whatever `bridge.max_frame` says,
//! and the node name in a hello must pass [`check_node_name`] before anything
//! else reads it. The connection's own maximum comes back once the handshake
//! succeeds.

use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use super::frame::{Frame, FrameCodec, FrameError, HANDSHAKE_MAX_FRAME};
use super::wire::{Control, Message, CONTROL, PROTOCOL_VERSION};

/// The shared cluster secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Secrets shorter than this are refused: they could be guessed.
pub const MIN_SECRET_LEN: usize = 16;

impl Secret {
    /// The secret in `bytes`, trimmed of surrounding whitespace.
    pub fn new(bytes: &[u8]) -> Result<Secret, String> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_LEN {
            return Err(format!(
                "holds {} bytes; a cluster secret needs at least {MIN_SECRET_LEN}",
                trimmed.len()
            ));
        }
        Ok(Secret(trimmed.to_vec()))
    }

    /// Reads the secret file at `path`, private as
    /// [`crate::config::files::read_private`] requires.
    pub fn read(path: &std::path::Path) -> Result<Secret, String> {
        let bytes = crate::config::files::read_private(path)?;
        Secret::new(&bytes)
    }

    fn proof(&self, label: &str, theirs: &[u8], mine: &[u8], name: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        for part in [label.as_bytes(), theirs, mine, name.as_bytes()] {
            // Parts are at most a few hundred bytes (checked names, hex nonces).
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            mac.update(&len.to_be_bytes());
            mac.update(part);
        }
        mac
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The other side does not hold our cluster secret.
    #[error("peer {peer} failed the cluster secret check (wrong secret)")]
    WrongSecret {
        /// The name the peer gave.
        peer: String,
    },
    /// The other side refused us.
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The other side speaks another protocol version.
    #[error("peer speaks protocol version {theirs}, this node {PROTOCOL_VERSION}")]
    Version {
        /// The peer's version.
        theirs: u16,
    },
    /// The other side sent something the handshake does not expect.
    #[error("handshake broken: {0}")]
    Protocol(String),
    /// The stream failed or closed.
    #[error("connection lost during the handshake: {0}")]
    Frame(#[from] FrameError),
}

fn nonce() -> Result<[u8; 32], HandshakeError> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce)
        .map_err(|e| HandshakeError::Protocol(format!("no randomness for a nonce: {e}")))?;
    Ok(nonce)
}

async fn send<S>(framed: &mut Framed<S, FrameCodec>, msg: &Control) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let body = serde_json::to_vec(msg).map_err(|e| HandshakeError::Protocol(e.to_string()))?;
    framed
        .send(Frame {
            kind: CONTROL,
            body: body.into(),
        })
        .await?;
    Ok(())
}

async fn receive<S>(framed: &mut Framed<S, FrameCodec>) -> Result<Control, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = match framed.next().await {
        Some(frame) => frame?,
        None => return Err(HandshakeError::Protocol("connection closed".into())),
    };
    control(frame)
}

/// A handshake frame's message; a refusal from the peer is an error.
fn control(frame: Frame) -> Result<Control, HandshakeError> {
    match Message::decode(frame) {
        Ok(Message::Control(Control::Refused { reason })) => Err(HandshakeError::Refused(reason)),
        Ok(Message::Control(control)) => Ok(control),
        Ok(other) => Err(HandshakeError::Protocol(format!(
            "expected a handshake message, got {other:?}"
        ))),
        Err(e) => Err(HandshakeError::Protocol(e.to_string())),
    }
}

/// The longest node name a hello may carry.
pub const MAX_NODE_NAME: usize = 64;

/// Checks a node name from a hello: 1 to [`MAX_NODE_NAME`] characters of
/// `A-Z a-z 0-9 . _ -`. The error never repeats the name itself, which may be
/// megabytes long or hold a newline meant to forge a log line.
pub fn check_node_name(name: &str) -> Result<(), HandshakeError> {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if (1..=MAX_NODE_NAME).contains(&name.len()) && name.bytes().all(|b| allowed(&b)) {
        return Ok(());
    }
    Err(HandshakeError::Protocol(format!(
        "node name of {} bytes is not 1 to {MAX_NODE_NAME} characters of A-Z, a-z, 0-9, '.', '_' and '-'",
        name.len()
    )))
}

/// A peer's hello, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHello {
    /// The peer's protocol version (compared with ours by the caller).
    pub version: u16,
    /// The peer's node name, checked by [`check_node_name`].
    pub node: String,
    /// The peer's nonce, at most 128 bytes.
    pub nonce: Vec<u8>,
    /// The acceptor's proof of the secret, at most 128 bytes.
    pub proof: Option<Vec<u8>>,
}

/// Reads a hello out of a handshake frame: a control message of type hello
/// with a valid node name and hex nonce and proof. (The fuzz target feeds
/// arbitrary frames to it.)
pub fn decode_hello(frame: Frame) -> Result<PeerHello, HandshakeError> {
    hello(control(frame)?)
}

fn hello(control: Control) -> Result<PeerHello, HandshakeError> {
    let Control::Hello {
        version,
        node,
        nonce,
        proof,
    } = control
    else {
        return Err(HandshakeError::Protocol(format!(
            "expected hello, got {control:?}"
        )));
    };
    check_node_name(&node)?;
    let nonce =
        hex_decode(&nonce).ok_or_else(|| HandshakeError::Protocol("nonce is not hex".into()))?;
    let proof = match proof {
        Some(p) => Some(
            hex_decode(&p).ok_or_else(|| HandshakeError::Protocol("proof is not hex".into()))?,
        ),
        None => None,
    };
    Ok(PeerHello {
        version,
        node,
        nonce,
        proof,
    })
}

/// The peer's hello, refused (and the connection failed) if its version differs.
async fn receive_hello<S>(framed: &mut Framed<S, FrameCodec>) -> Result<PeerHello, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello = match receive(framed).await.and_then(hello) {
        Ok(hello) => hello,
        Err(error @ HandshakeError::Protocol(_)) => return Err(refuse(framed, error).await),
        Err(error) => return Err(error),
    };
    if hello.version != PROTOCOL_VERSION {
        let theirs = hello.version;
        return Err(refuse(framed, HandshakeError::Version { theirs }).await);
    }
    Ok(hello)
}

async fn refuse<S>(framed: &mut Framed<S, FrameCodec>, error: HandshakeError) -> HandshakeError
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reason = match &error {
        HandshakeError::WrongSecret { .. } => "wrong cluster secret".to_string(),
        other => other.to_string(),
    };
    // The connection is being dropped either way; the peer may already be gone.
    let _ = send(framed, &Control::Refused { reason }).await;
    error
}

/// Lowers the codec's maximum to [`HANDSHAKE_MAX_FRAME`] for the handshake;
/// returns the connection's own maximum, restored once the handshake succeeds.
fn lower_max<S>(framed: &mut Framed<S, FrameCodec>) -> usize {
    let max = framed.codec().max();
    framed.codec_mut().set_max(max.min(HANDSHAKE_MAX_FRAME));
    max
}

/// Opens a connection as the dialer; returns the acceptor's node name. Frames
/// over [`HANDSHAKE_MAX_FRAME`] end it; the codec's maximum is restored after.
pub async fn dial<S>(
    framed: &mut Framed<S, FrameCodec>,
    me: &str,
    secret: &Secret,
) -> Result<String, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = lower_max(framed);
    let peer = dialing(framed, me, secret).await?;
    framed.codec_mut().set_max(max);
    Ok(peer)
}

async fn dialing<S>(
    framed: &mut Framed<S, FrameCodec>,
    me: &str,
    secret: &Secret,
) -> Result<String, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mine = nonce()?;
    send(
        framed,
        &Control::Hello {
            version: PROTOCOL_VERSION,
            node: me.to_string(),
            nonce: hex_encode(&mine),
            proof: None,
        },
    )
    .await?;
    let PeerHello {
        node: peer,
        nonce: theirs,
        proof,
        ..
    } = receive_hello(framed).await?;
    let valid = proof.is_some_and(|p| {
        secret
            .proof("acceptor", &mine, &theirs, &peer)
            .verify_slice(&p)
            .is_ok()
    });
    if !valid {
        return Err(refuse(framed, HandshakeError::WrongSecret { peer }).await);
    }
    let proof = secret
        .proof("dialer", &theirs, &mine, me)
        .finalize()
        .into_bytes();
    send(
        framed,
        &Control::Proof {
            proof: hex_encode(&proof),
        },
    )
    .await?;
    match receive(framed).await? {
        Control::Welcome => Ok(peer),
        other => Err(HandshakeError::Protocol(format!(
            "expected welcome, got {other:?}"
        ))),
    }
}

/// How long the acceptor waits for the dialer's Hello, the first frame of the
/// handshake (after TLS, if any).
pub const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers a connection as the acceptor; the dialer's Hello must arrive within
/// [`HELLO_TIMEOUT`]; returns the dialer's node name. Frames
/// over [`HANDSHAKE_MAX_FRAME`] end it; the codec's maximum is restored after.
pub async fn accept<S>(
    framed: &mut Framed<S, FrameCodec>,
    me: &str,
    secret: &Secret,
) -> Result<String, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = lower_max(framed);
    let peer = accepting(framed, me, secret).await?;
    framed.codec_mut().set_max(max);
    Ok(peer)
}

async fn accepting<S>(
    framed: &mut Framed<S, FrameCodec>,
    me: &str,
    secret: &Secret,
) -> Result<String, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A stranger that connects and stalls holds a handshake slot: its Hello
    // must come soon, well before the whole handshake's deadline.
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, receive_hello(framed)).await {
        Ok(hello) => hello?,
        Err(_) => {
            let late = HandshakeError::Protocol(format!("no Hello within {HELLO_TIMEOUT:?}"));
            return Err(refuse(framed, late).await);
        }
    };
    let PeerHello {
        node: peer,
        nonce: theirs,
        ..
    } = hello;
    let mine = nonce()?;
    let proof = secret
        .proof("acceptor", &theirs, &mine, me)
        .finalize()
        .into_bytes();
    send(
        framed,
        &Control::Hello {
            version: PROTOCOL_VERSION,
            node: me.to_string(),
            nonce: hex_encode(&mine),
            proof: Some(hex_encode(&proof)),
        },
    )
    .await?;
    let Control::Proof { proof } = receive(framed).await? else {
        return Err(HandshakeError::Protocol(
            "expected the dialer's proof".into(),
        ));
    };
    let valid = hex_decode(&proof).is_some_and(|p| {
        secret
            .proof("dialer", &mine, &theirs, &peer)
            .verify_slice(&p)
            .is_ok()
    });
    if !valid {
        return Err(refuse(framed, HandshakeError::WrongSecret { peer }).await);
    }
    send(framed, &Control::Welcome).await?;
    Ok(peer)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests;
