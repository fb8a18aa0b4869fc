//! The connection to central: connect, exchange preambles, Hello/Welcome, then send every
//! batch of the outbox above what central holds and drop what it acknowledges. On any failure:
//! reconnect with exponential backoff and jitter.
//!
//! Nothing here waits on central without a bound: connecting and the handshake have timeouts,
//! a write that makes no progress for [`STALL`] fails ([`Stalling`]), and so does a session in
//! which sent batches wait as long for their Ack; TCP keepalive and TCP_USER_TIMEOUT find a peer that vanished while the agent was idle.
//! A stop ends the session at once, in the middle of a write if it must.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use log::{error, info, warn};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::watch,
    time::{Instant, Sleep, timeout},
};
use xdt_systemd::logging::error_chain;
use xdt_wire::{Connection, ErrorCode, FrameError, Hello, Message, WireError};

use crate::shared::Shared;

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect to {central}")]
    Connect {
        central: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} timed out")]
    Timeout { what: &'static str },
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("central refused us ({code:?}): {message}")]
    Rejected { code: ErrorCode, message: String },
    #[error("central sent {what} where it should not")]
    Unexpected { what: &'static str },
    #[error("central closed the connection")]
    Closed,
}

/// How long a connection may make no progress while the agent waits on it: a write that
/// moves no byte, or sent batches without an Ack. Central acknowledges a batch as soon as it
/// has stored it, in milliseconds; a full batch (1 MiB) takes 15 s at 560 kbit/s.
pub(crate) const STALL: Duration = Duration::from_secs(15);
/// Idle connections: the first keepalive probe after this long without traffic...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// ...then one every this long, and the connection is dropped after this many unanswered.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// Sent data unacknowledged by the peer's TCP for this long closes the connection
/// (TCP_USER_TIMEOUT): a central host that vanished mid-write.
const USER_TIMEOUT: Duration = Duration::from_secs(30);

const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// The delay before reconnection attempt `attempt` (0-based): doubling from 0.5 s up to 30 s,
/// half of it fixed and half random ("equal jitter"), so a fleet does not reconnect in step.
fn backoff(attempt: u32, random: u64) -> Duration {
    let cap = FIRST_DELAY
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(MAX_DELAY);
    let half = cap / 2;
    let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(random % jitter_ns)
}

/// xorshift64: jitter needs no cryptographic randomness.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

pub(crate) async fn run(
    central: String,
    hello: Hello,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut attempt = 0;
    let mut random = hello.instance | 1;
    loop {
        if *stop.borrow() {
            return;
        }
        let result = session(&central, &hello, &shared, &mut stop, &mut attempt).await;
        shared
            .connected
            .store(false, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(e) => warn!(peer = central.as_str(); "central {central}: {}", error_chain(&e)),
        }
        shared
            .reconnects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let delay = backoff(attempt, next_random(&mut random));
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn session(
    central: &str,
    hello: &Hello,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    attempt: &mut u32,
) -> Result<(), SessionError> {
    let stream = timeout(Duration::from_secs(5), TcpStream::connect(central))
        .await
        .map_err(|_| SessionError::Timeout { what: "connecting" })?
        .map_err(|source| SessionError::Connect {
            central: central.to_owned(),
            source,
        })?;
    configure(&stream).map_err(|source| SessionError::Connect {
        central: central.to_owned(),
        source,
    })?;
    let mut conn = Connection::new(Stalling::new(stream, STALL));
    conn.write_preamble().await?;
    timeout(Duration::from_secs(10), conn.read_preamble())
        .await
        .map_err(|_| SessionError::Timeout {
            what: "the handshake",
        })??;
    conn.write_message(&Message::Hello(hello.clone())).await?;
    let welcome = timeout(Duration::from_secs(10), conn.read_message())
        .await
        .map_err(|_| SessionError::Timeout {
            what: "waiting for Welcome",
        })??;
    let last = match welcome {
        Some(Message::Welcome(w)) => w.last_sequence,
        Some(Message::Error(e)) => {
            return Err(SessionError::Rejected {
                code: e.code,
                message: e.message,
            });
        }
        Some(_) => {
            return Err(SessionError::Unexpected {
                what: "a message other than Welcome",
            });
        }
        None => return Err(SessionError::Closed),
    };
    info!(peer = central; "connected to central {central}; it holds our batches up to {last}");
    *attempt = 0;
    shared
        .connected
        .store(true, std::sync::atomic::Ordering::Relaxed);
    shared.change_outbox(|o| o.acknowledge(last));
    let mut sent = last;
    let mut acked = last;
    // Since when an Ack is due: set by a write while nothing was outstanding, moved on by
    // every Ack that leaves something outstanding. Acks come in order, one per batch, so the
    // gap between two is at most the time one batch takes to reach central.
    let mut ack_due_since: Option<Instant> = None;
    // The frame being sent, made from the outbox's encoded events and records.
    let mut frame = Vec::new();
    loop {
        loop {
            let next = shared
                .outbox()
                .after(sent)
                .next()
                .map(|entry| (entry.batch.sequence, entry.flows.is_some()));
            let Some((sequence, with_flows)) = next else {
                break;
            };
            if with_flows && conn.version() < 3 {
                // Sent once per batch: a batch taken back for a resend has no flows left.
                let dropped = shared.change_outbox(|o| o.drop_flows(sequence));
                if dropped > 0 {
                    warn!(
                        "central speaks protocol version {}, without flow records: {dropped} \
                         records of batch {sequence} dropped (counted); upgrade central",
                        conn.version()
                    );
                }
            }
            frame.clear();
            // Under the lock: the frame is made from the batch as it is now (a bound may have
            // dropped it, or some of its events, since it was looked at).
            let encoded = shared
                .outbox()
                .after(sent)
                .next()
                .filter(|entry| entry.batch.sequence == sequence)
                .map(|entry| entry.encode(conn.version(), &mut frame));
            let written = match encoded {
                None => continue,
                Some(Ok(())) => tokio::select! {
                    written = conn.write_frame(&frame) => written,
                    _ = stop.changed() => return Ok(()),
                },
                Some(Err(e)) => Err(e.into()),
            };
            match written {
                Ok(()) => {}
                // Refused before a byte went out: the connection is intact. Splitting keeps
                // batches within the maximum, so this is a bug; shed the batch's events (counted)
                // rather than retry a frame that can never go.
                Err(WireError::Frame(FrameError::TooLarge { len })) => {
                    let dropped = shared.change_outbox(|o| o.shed(sequence));
                    error!(
                        "batch {sequence} encodes to {len} bytes, over the frame maximum: \
                         {dropped} of its events and flow records dropped"
                    );
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            sent = sequence;
            ack_due_since.get_or_insert_with(Instant::now);
        }
        let stalled = ack_due_since.map(|since| since + STALL);
        tokio::select! {
            message = conn.read_message() => match message? {
                Some(Message::Ack(ack)) => {
                    shared.change_outbox(|o| o.acknowledge(ack.sequence));
                    acked = acked.max(ack.sequence);
                    ack_due_since = (sent > acked).then(Instant::now);
                }
                Some(Message::Error(e)) => return Err(SessionError::Rejected { code: e.code, message: e.message }),
                Some(_) => return Err(SessionError::Unexpected { what: "a message other than Ack" }),
                None => return Err(SessionError::Closed),
            },
            () = shared.new_batch.notified() => {}
            () = tokio::time::sleep_until(stalled.unwrap_or_else(Instant::now)), if stalled.is_some() => {
                return Err(SessionError::Timeout { what: "waiting for an Ack" });
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// No Nagle delay; keepalive probes on an idle connection; TCP_USER_TIMEOUT for data the peer
/// never acknowledges.
fn configure(stream: &TcpStream) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    stream.set_nodelay(true)?;
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    setsockopt(stream, sockopt::KeepAlive, &true)?;
    setsockopt(stream, sockopt::TcpKeepIdle, &secs(KEEPALIVE_IDLE))?;
    setsockopt(stream, sockopt::TcpKeepInterval, &secs(KEEPALIVE_INTERVAL))?;
    setsockopt(stream, sockopt::TcpKeepCount, &KEEPALIVE_PROBES)?;
    let millis = u32::try_from(USER_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    setsockopt(stream, sockopt::TcpUserTimeout, &millis)?;
    Ok(())
}

/// A stream whose writes fail with `TimedOut` once one has made no progress for `limit`: a peer
/// that stops reading (a frozen central) fills the socket buffers, and a plain write would then
/// wait for ever. Progress, not the whole frame, is timed, so a large batch over a slow link is
/// not mistaken for a stall.
#[derive(Debug)]
pub(crate) struct Stalling<S> {
    inner: S,
    limit: Duration,
    /// Armed when a write first cannot proceed, disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> Stalling<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("central took no data for {limit:?}"),
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalling<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalling<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// A peer that reads nothing: writes fill the pipe, then fail after the limit instead of
    /// waiting for ever; a peer that reads slowly is no stall.
    #[tokio::test]
    async fn a_write_without_progress_times_out() {
        let limit = Duration::from_millis(300);
        let (a, _b) = tokio::io::duplex(1024);
        let mut stalling = Stalling::new(a, limit);
        let started = Instant::now();
        let e = stalling
            .write_all(&[7; 4096])
            .await
            .expect_err("the peer reads nothing");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= limit && took < limit * 3, "{took:?}");

        // A peer that reads a little every 200 ms takes 8 KiB through a 1 KiB pipe in well
        // over the limit, and never stalls it.
        let (a, mut b) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut chunk = [0; 512];
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                match tokio::io::AsyncReadExt::read(&mut b, &mut chunk).await {
                    Ok(0) | Err(_) => return all.len(),
                    Ok(n) => all.extend_from_slice(&chunk[..n]),
                }
            }
        });
        let mut stalling = Stalling::new(a, limit);
        stalling
            .write_all(&[7; 8192])
            .await
            .expect("slow progress is progress");
        drop(stalling);
        assert_eq!(reader.await.expect("reader"), 8192);
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        for (attempt, cap) in [
            (0, 500),
            (1, 1000),
            (2, 2000),
            (5, 16_000),
            (6, 30_000),
            (40, 30_000),
        ] {
            let cap = Duration::from_millis(cap);
            for random in [0, 1, 12_345, u64::MAX] {
                let d = backoff(attempt, random);
                assert!(
                    d >= cap / 2 && d <= cap,
                    "attempt {attempt}: {d:?} not in [{:?}, {cap:?}]",
                    cap / 2
                );
            }
        }
        let mut state = 7;
        let spread: std::collections::HashSet<_> = (0..20)
            .map(|_| backoff(3, next_random(&mut state)))
            .collect();
        assert!(spread.len() > 15, "jitter spreads the delays");
    }
}
