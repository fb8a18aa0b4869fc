//! One connection's byte stream: frames read with `xdt_wire::frame` on central's own buffer
//! (the deadline starts with a frame's first byte, see the module above), outgoing frames
//! queued and flushed, and the linger after an error.

use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{Instant, timeout, timeout_at},
};
use xdt_wire::{
    ErrorCode, ErrorMessage, Message, Preamble,
    frame::{self, HEADER_LEN},
};

use crate::error::CloseReason;

/// How long and how much of the peer's data is drained after an error before closing, so the
/// error reaches the peer instead of being overtaken by a reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 2 * xdt_wire::MAX_FRAME;

/// The byte stream of one connection: a read buffer, queued outgoing frames, and the deadline
/// of the frame being received.
pub(super) struct Wire {
    stream: TcpStream,
    buffer: BytesMut,
    out: Vec<u8>,
    preamble_sent: bool,
    frame_deadline: Option<Instant>,
    /// Ours until the agent's preamble is read, then the agreed one (the lower of the two).
    version: u16,
}

impl Wire {
    pub(super) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buffer: BytesMut::with_capacity(16 * 1024),
            out: Vec::new(),
            preamble_sent: false,
            frame_deadline: None,
            version: xdt_wire::PROTOCOL_VERSION,
        }
    }

    /// The protocol version of this connection: agreed once the agent's preamble is read (an
    /// agent of version 2 sends no flows).
    pub(super) fn version(&self) -> u16 {
        self.version
    }

    pub(super) async fn read_preamble(&mut self) -> Result<(), CloseReason> {
        while self.buffer.len() < Preamble::LEN {
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(CloseReason::HandshakeClosed {
                    buffered: self.buffer.len(),
                });
            }
        }
        let mut bytes = [0; Preamble::LEN];
        bytes.copy_from_slice(&self.buffer[..Preamble::LEN]);
        self.buffer.advance(Preamble::LEN);
        let theirs = Preamble::decode(&bytes)
            .map_err(|_| CloseReason::NotXdt {
                found: [bytes[0], bytes[1], bytes[2], bytes[3]],
            })?
            .version;
        self.version =
            xdt_wire::negotiate(theirs).map_err(|theirs| CloseReason::VersionMismatch {
                ours: xdt_wire::PROTOCOL_VERSION,
                theirs,
            })?;
        Ok(())
    }

    /// Our preamble, with the agreed version (ours when the agent's was refused).
    pub(super) async fn write_preamble(&mut self) -> std::io::Result<()> {
        self.preamble_sent = true;
        let preamble = Preamble {
            version: self.version,
        };
        self.stream.write_all(&preamble.encode()).await
    }

    /// The next message and its frame payload; `None` when the peer closed between frames. Waiting for a frame to
    /// start has no deadline; once its first byte is in, it must complete within
    /// `frame_timeout`. Queued frames are sent before waiting for the peer.
    pub(super) async fn read_message(
        &mut self,
        frame_timeout: Duration,
    ) -> Result<Option<(Message, Bytes)>, CloseReason> {
        loop {
            if let Some(len) = frame::check(&self.buffer)? {
                let mut frame = self.buffer.split_to(len);
                frame.advance(HEADER_LEN);
                let payload = frame.freeze();
                self.frame_deadline = None;
                let message = frame::decode(&payload)?;
                if message.since() > self.version {
                    return Err(CloseReason::Unexpected {
                        got: message.name(),
                        when: "on a connection of an older protocol version",
                    });
                }
                return Ok(Some((message, payload)));
            }
            self.flush().await?;
            if self.buffer.len() >= HEADER_LEN {
                // The header is in: make room for the whole frame at once.
                let want = u32::from_be_bytes([
                    self.buffer[0],
                    self.buffer[1],
                    self.buffer[2],
                    self.buffer[3],
                ]) as usize
                    + HEADER_LEN;
                self.buffer.reserve(want - self.buffer.len());
            }
            let read = if self.buffer.is_empty() {
                self.stream.read_buf(&mut self.buffer).await?
            } else {
                let deadline = *self
                    .frame_deadline
                    .get_or_insert_with(|| Instant::now() + frame_timeout);
                timeout_at(deadline, self.stream.read_buf(&mut self.buffer))
                    .await
                    .map_err(|_| CloseReason::FrameTimeout {
                        seconds: frame_timeout.as_secs_f64(),
                        buffered: self.buffer.len(),
                    })??
            };
            if read == 0 {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                return Err(CloseReason::Truncated {
                    buffered: self.buffer.len(),
                });
            }
            if self.frame_deadline.is_none() {
                self.frame_deadline = Some(Instant::now() + frame_timeout);
            }
        }
    }

    pub(super) fn queue(&mut self, message: &Message) -> Result<(), CloseReason> {
        frame::encode(message, &mut self.out)?;
        Ok(())
    }

    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends `Error{code}` (after our preamble if not sent yet), then closes gracefully: our
    /// side first, then the peer's data is drained for a moment so the error is not lost to
    /// a reset.
    pub(super) async fn close_with(&mut self, code: ErrorCode, message: String) {
        let send = async {
            if !self.preamble_sent {
                self.write_preamble().await?;
            }
            self.out.clear();
            if frame::encode(
                &Message::Error(ErrorMessage { code, message }),
                &mut self.out,
            )
            .is_ok()
            {
                self.flush().await?;
            }
            self.stream.shutdown().await
        };
        if !matches!(timeout(LINGER, send).await, Ok(Ok(()))) {
            return;
        }
        let drain = async {
            let mut drained = 0;
            while drained < LINGER_BYTES {
                self.buffer.clear();
                match self.stream.read_buf(&mut self.buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = timeout(LINGER, drain).await;
    }
}
