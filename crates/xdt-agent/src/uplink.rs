//! The connection to central: connect, exchange preambles, Hello/Welcome, then send every
//! batch of the outbox above what central holds and drop what it acknowledges. On any failure:
//! reconnect with exponential backoff and jitter.

use std::{sync::Arc, time::Duration};

use log::{info, warn};
use tokio::{net::TcpStream, sync::watch, time::timeout};
use xdt_wire::{Connection, ErrorCode, Hello, Message, WireError};

use crate::Shared;

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
            Err(e) => warn!(peer = central.as_str(); "central {central}: {}", chain(&e)),
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
    stream
        .set_nodelay(true)
        .map_err(|source| SessionError::Connect {
            central: central.to_owned(),
            source,
        })?;
    let mut conn = Connection::new(stream);
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
    shared.outbox().acknowledge(last);
    let mut sent = last;
    loop {
        loop {
            let next = shared.outbox().after(sent).next().cloned();
            let Some(batch) = next else { break };
            sent = batch.sequence;
            conn.write_message(&Message::Batch(batch)).await?;
        }
        tokio::select! {
            message = conn.read_message() => match message? {
                Some(Message::Ack(ack)) => shared.outbox().acknowledge(ack.sequence),
                Some(Message::Error(e)) => return Err(SessionError::Rejected { code: e.code, message: e.message }),
                Some(_) => return Err(SessionError::Unexpected { what: "a message other than Ack" }),
                None => return Err(SessionError::Closed),
            },
            () = shared.new_batch.notified() => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

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
