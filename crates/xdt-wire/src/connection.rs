//! Messages on a tokio byte stream: preamble exchange, buffered frame reads, frame writes.

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::{
    MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION,
    frame::{self, FrameError, HEADER_LEN, Preamble},
};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer closed the stream inside a frame or a preamble.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    /// The peer speaks no protocol version this build speaks.
    #[error(
        "protocol version mismatch: we speak {MIN_PROTOCOL_VERSION} to {ours}, the peer speaks {theirs}"
    )]
    VersionMismatch { ours: u16, theirs: u16 },
    /// A message the connection's agreed protocol version does not have (sent or received).
    #[error("{message} needs protocol version {since}; this connection speaks {version}")]
    NotInVersion {
        message: &'static str,
        since: u16,
        version: u16,
    },
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

/// A stream carrying xdt frames. `read_message` returns `None` when the peer closed cleanly
/// between frames.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    buffer: BytesMut,
    out: Vec<u8>,
    /// Offered until the peer's preamble is read, then the agreed one.
    version: u16,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        Self::with_version(stream, PROTOCOL_VERSION)
    }

    /// A connection that offers `version` instead of [`PROTOCOL_VERSION`]: a peer that has to
    /// speak an older version (or a test that plays one).
    pub fn with_version(stream: S, version: u16) -> Self {
        Self {
            stream,
            buffer: BytesMut::with_capacity(8 * 1024),
            out: Vec::new(),
            version,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The protocol version: the one offered until the peer's preamble is read, the agreed
    /// one after.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Sends our preamble: the version we offer, or, when the peer's preamble came first (the
    /// accepting side), the agreed one.
    pub async fn write_preamble(&mut self) -> Result<(), WireError> {
        let preamble = Preamble {
            version: self.version,
        };
        self.stream.write_all(&preamble.encode()).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Reads the peer's preamble and agrees on the lower of the two versions
    /// ([`frame::negotiate`]); a wrong magic or no common version is an error (the caller
    /// decides whether to tell the peer before closing).
    pub async fn read_preamble(&mut self) -> Result<Preamble, WireError> {
        while self.buffer.len() < Preamble::LEN {
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(WireError::Truncated {
                    buffered: self.buffer.len(),
                });
            }
        }
        let mut bytes = [0; Preamble::LEN];
        bytes.copy_from_slice(&self.buffer[..Preamble::LEN]);
        self.buffer.advance(Preamble::LEN);
        let preamble = Preamble::decode(&bytes)?;
        let ours = self.version;
        let agreed = frame::negotiate(preamble.version)
            .map(|agreed| agreed.min(ours))
            .ok()
            .filter(|&agreed| agreed >= MIN_PROTOCOL_VERSION)
            .ok_or(WireError::VersionMismatch {
                ours,
                theirs: preamble.version,
            })?;
        self.version = agreed;
        Ok(preamble)
    }

    fn allowed(&self, message: &Message) -> Result<(), WireError> {
        if message.since() > self.version {
            return Err(WireError::NotInVersion {
                message: message.name(),
                since: message.since(),
                version: self.version,
            });
        }
        Ok(())
    }

    pub async fn read_message(&mut self) -> Result<Option<Message>, WireError> {
        loop {
            if let Some(len) = frame::check(&self.buffer)? {
                let message = frame::decode(&self.buffer[HEADER_LEN..len]);
                self.buffer.advance(len);
                let message = message?;
                self.allowed(&message)?;
                return Ok(Some(message));
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                return Err(WireError::Truncated {
                    buffered: self.buffer.len(),
                });
            }
        }
    }

    /// Sends `message`; one the agreed version does not have is refused before anything is
    /// written.
    pub async fn write_message(&mut self, message: &Message) -> Result<(), WireError> {
        self.allowed(message)?;
        self.out.clear();
        frame::encode(message, &mut self.out)?;
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends a frame the caller encoded for this connection's [`Connection::version`] (with
    /// [`frame::encode_batch`], which picks the message by version).
    pub async fn write_frame(&mut self, frame: &[u8]) -> Result<(), WireError> {
        self.stream.write_all(frame).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ack, frame::MAX_FRAME};

    #[tokio::test]
    async fn messages_cross_a_stream_in_pieces() {
        let (a, b) = tokio::io::duplex(7); // tiny buffer: every frame arrives in pieces
        let writer = tokio::spawn(async move {
            let mut a = Connection::new(a);
            a.write_preamble().await.expect("preamble");
            for sequence in 0..50 {
                a.write_message(&Message::Ack(Ack { sequence }))
                    .await
                    .expect("write");
            }
        });
        let mut b = Connection::new(b);
        b.read_preamble().await.expect("preamble");
        for sequence in 0..50 {
            assert_eq!(
                b.read_message().await.expect("read"),
                Some(Message::Ack(Ack { sequence }))
            );
        }
        writer.await.expect("writer");
        assert_eq!(b.read_message().await.expect("clean close"), None);
    }

    #[tokio::test]
    async fn close_inside_a_frame_is_an_error() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, 1, 2]).await.expect("write");
        drop(a);
        let mut b = Connection::new(b);
        assert!(matches!(
            b.read_message().await,
            Err(WireError::Truncated { buffered: 6 })
        ));
    }

    #[tokio::test]
    async fn oversized_length_fails_without_reading_the_body() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&((MAX_FRAME as u32 + 1).to_be_bytes()))
            .await
            .expect("write");
        let mut b = Connection::new(b);
        assert!(matches!(
            b.read_message().await,
            Err(WireError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    /// A version-2 peer and a version-3 one agree on 2 whichever side accepts, and then neither
    /// sends nor takes a `FlowBatch`.
    #[tokio::test]
    async fn versions_agree_on_the_lower_one() {
        for (offer_a, offer_b) in [(2, 3), (3, 2), (3, 3)] {
            let (a, b) = tokio::io::duplex(1024);
            let mut a = Connection::with_version(a, offer_a);
            let mut b = Connection::with_version(b, offer_b);
            a.write_preamble().await.expect("a preamble");
            b.read_preamble().await.expect("b reads");
            b.write_preamble().await.expect("b preamble");
            a.read_preamble().await.expect("a reads");
            let agreed = offer_a.min(offer_b);
            assert_eq!((a.version(), b.version()), (agreed, agreed));
            let flows = crate::frame::tests::samples().remove(5);
            if agreed < 3 {
                assert!(matches!(
                    a.write_message(&flows).await,
                    Err(WireError::NotInVersion {
                        message: "FlowBatch",
                        since: 3,
                        version: 2
                    })
                ));
                // Written anyway (bypassing the check): the reader refuses it.
                let mut out = Vec::new();
                frame::encode(&flows, &mut out).expect("encode");
                a.stream.write_all(&out).await.expect("raw write");
                assert!(matches!(
                    b.read_message().await,
                    Err(WireError::NotInVersion { .. })
                ));
            } else {
                a.write_message(&flows).await.expect("write");
                assert_eq!(b.read_message().await.expect("read"), Some(flows));
            }
        }
    }

    #[tokio::test]
    async fn version_mismatch_and_garbage_preambles() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"XDT\0\0\x01\0\0").await.expect("write");
        let mut b = Connection::new(b);
        assert!(matches!(
            b.read_preamble().await,
            Err(WireError::VersionMismatch {
                ours: crate::PROTOCOL_VERSION,
                theirs: 1
            })
        ));
        // A newer peer is spoken to in our version (it decides whether it still speaks it).
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"XDT\0\0\x09\0\0").await.expect("write");
        let mut b = Connection::new(b);
        assert_eq!(b.read_preamble().await.expect("agreed").version, 9);
        assert_eq!(b.version(), crate::PROTOCOL_VERSION);

        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        let mut b = Connection::new(b);
        assert!(matches!(
            b.read_preamble().await,
            Err(WireError::Frame(FrameError::BadMagic { .. }))
        ));
    }
}
