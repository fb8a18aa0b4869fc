//! Messages on a tokio byte stream: preamble exchange, buffered frame reads, frame writes.

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::{
    Message,
    frame::{self, FrameError, HEADER_LEN, Preamble},
};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer closed the stream inside a frame or a preamble.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
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
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buffer: BytesMut::with_capacity(8 * 1024),
            out: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub async fn write_preamble(&mut self) -> Result<(), WireError> {
        self.stream.write_all(&Preamble::ours().encode()).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Reads the peer's preamble; a wrong magic or version is an error (the caller decides
    /// whether to tell the peer before closing).
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
        let ours = Preamble::ours().version;
        if preamble.version != ours {
            return Err(WireError::VersionMismatch {
                ours,
                theirs: preamble.version,
            });
        }
        Ok(preamble)
    }

    pub async fn read_message(&mut self) -> Result<Option<Message>, WireError> {
        loop {
            if let Some(len) = frame::check(&self.buffer)? {
                let message = frame::decode(&self.buffer[HEADER_LEN..len]);
                self.buffer.advance(len);
                return Ok(Some(message?));
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

    pub async fn write_message(&mut self, message: &Message) -> Result<(), WireError> {
        self.out.clear();
        frame::encode(message, &mut self.out)?;
        self.stream.write_all(&self.out).await?;
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

    #[tokio::test]
    async fn version_mismatch_and_garbage_preambles() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"XDT\0\0\x09\0\0").await.expect("write");
        let mut b = Connection::new(b);
        assert!(matches!(
            b.read_preamble().await,
            Err(WireError::VersionMismatch {
                ours: crate::PROTOCOL_VERSION,
                theirs: 9
            })
        ));

        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        let mut b = Connection::new(b);
        assert!(matches!(
            b.read_preamble().await,
            Err(WireError::Frame(FrameError::BadMagic { .. }))
        ));
    }
}
