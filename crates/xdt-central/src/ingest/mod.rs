//! The telemetry listener: accepts agents under a connection limit and runs one session per
//! connection (preamble, `Hello`, then `Batch` -> `Ack`), as docs/telemetry-protocol.md says.
//!
//! Frames are read with `xdt_wire::frame` on our own buffer rather than `xdt_wire::Connection`
//! because central needs a deadline that starts with a frame's first byte: an agent may be
//! quiet for a long batch interval, but a frame it has started must finish within
//! `frame_timeout`. Dead peers are found by TCP keepalive. A bad connection is closed with a
//! logged reason and never affects the others.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use log::{debug, info, warn};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore, broadcast, mpsc},
    time::{Instant, timeout_at},
};
use xdt_wire::{Ack, ErrorCode, ErrorMessage, Hello, Message, Welcome};

use self::{close_log::CloseLog, wire::Wire};
use crate::{
    config::Token,
    counters::Counters,
    error::CloseReason,
    persist::journal::{Journal, Record},
    state::{Applied, Refused, Shared, now_unix},
};

pub(crate) mod close_log;
mod wire;

/// A dead peer is found after about 60 + 3 x 10 s without an answer to keepalive probes.
const KEEPALIVE_IDLE: Duration = Duration::from_mins(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// What every session needs.
#[derive(Debug)]
pub(crate) struct Context {
    pub state: Shared,
    pub token: Token,
    pub hello_timeout: Duration,
    pub frame_timeout: Duration,
    /// With `--state-dir`: batches are journaled and synced before their `Ack`.
    pub journal: Option<Arc<Journal>>,
    /// With `--otlp-logs`: the events of every newly stored batch go out as OTLP logs.
    pub event_logs: Option<crate::export::otlp_logs::EventLogs>,
    /// How many closed connections are logged one by one.
    pub close_log: CloseLog,
}

/// An unauthenticated connection younger than this is never pushed out by a newer one: an
/// agent sends its preamble and `Hello` within a round trip or two.
pub(crate) const HANDSHAKE_GRACE: Duration = Duration::from_secs(1);

/// The two budgets of telemetry connections: unauthenticated ones (`--max-handshakes`), and
/// the agents' sessions (`--max-connections`), taken only after a valid `Hello`.
struct Budgets {
    handshakes: Arc<Mutex<Handshakes>>,
    sessions: Arc<Semaphore>,
    max_connections: usize,
}

/// The unauthenticated connections, oldest first.
struct Handshakes {
    max: usize,
    next: u64,
    waiting: VecDeque<(u64, Instant, Arc<Notify>)>,
}

/// A connection's place among the unauthenticated ones; given back when dropped. `pushed_out`
/// fires when a newer connection took it.
struct HandshakeSlot {
    id: u64,
    pushed_out: Arc<Notify>,
    handshakes: Arc<Mutex<Handshakes>>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut handshakes = self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(pos) = handshakes
            .waiting
            .iter()
            .position(|(id, _, _)| *id == self.id)
        {
            handshakes.waiting.remove(pos);
        }
    }
}

impl Budgets {
    /// A place for a new connection: free, or taken from the oldest unauthenticated one if it
    /// has had [`HANDSHAKE_GRACE`]; `None` if all are younger.
    fn handshake(&self) -> Option<HandshakeSlot> {
        let mut handshakes = self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if handshakes.waiting.len() >= handshakes.max {
            let (_, since, _) = handshakes.waiting.front()?;
            if since.elapsed() < HANDSHAKE_GRACE {
                return None;
            }
            if let Some((_, _, oldest)) = handshakes.waiting.pop_front() {
                oldest.notify_one();
            }
        }
        let id = handshakes.next;
        handshakes.next += 1;
        let pushed_out = Arc::new(Notify::new());
        handshakes
            .waiting
            .push_back((id, Instant::now(), Arc::clone(&pushed_out)));
        Some(HandshakeSlot {
            id,
            pushed_out,
            handshakes: Arc::clone(&self.handshakes),
        })
    }
}

/// Accepts connections until `shutdown` fires. Each session holds a clone of `done`, so the
/// caller knows every session has ended when its receiver yields `None`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    context: Arc<Context>,
    max_connections: usize,
    max_handshakes: usize,
    shutdown: broadcast::Sender<()>,
    done: mpsc::Sender<()>,
) {
    let budgets = Arc::new(Budgets {
        handshakes: Arc::new(Mutex::new(Handshakes {
            max: max_handshakes,
            next: 0,
            waiting: VecDeque::new(),
        })),
        sessions: Arc::new(Semaphore::new(max_connections)),
        max_connections,
    });
    let mut stop = shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.recv() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: wait for sessions to end, keep serving.
                Counters::add(&context.state.counters().telemetry_accept_errors);
                warn!(cause:% = e; "accepting a telemetry connection failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = stop.recv() => return,
                }
            }
        };
        let Some(slot) = budgets.handshake() else {
            // Nothing is known of the peer yet: it is closed without a word (and without a
            // log line per connection; the counter says how many).
            Counters::add(&context.state.counters().handshakes_refused);
            debug!(peer:% = peer; "connection closed: too many unauthenticated connections");
            continue;
        };
        tune(&stream, peer);
        let context = Arc::clone(&context);
        let budgets = Arc::clone(&budgets);
        let stop = shutdown.subscribe();
        let done = done.clone();
        tokio::spawn(async move {
            session(stream, peer, &context, &budgets, slot, stop).await;
            drop(done);
        });
    }
}

fn tune(stream: &TcpStream, peer: SocketAddr) {
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| stream.set_nodelay(true))
    {
        debug!(peer:% = peer, cause:% = e; "cannot set keepalive or nodelay");
    }
}

/// One agent connection, from preamble to close; logs why it ended. The handshake runs in
/// the unauthenticated budget (`slot`); an agent with a valid `Hello` then takes a session
/// slot or is told `Busy`.
async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    context: &Context,
    budgets: &Budgets,
    slot: HandshakeSlot,
    mut stop: broadcast::Receiver<()>,
) {
    let mut wire = Wire::new(stream);
    let hello_deadline = Instant::now() + context.hello_timeout;
    let handshake = tokio::select! {
        handshake = timeout_at(hello_deadline, handshake(&mut wire, context)) => handshake,
        () = slot.pushed_out.notified() => {
            Counters::add(&context.state.counters().handshakes_refused);
            debug!(peer:% = peer; "closed: no Hello yet and a newer connection needed the place");
            return;
        }
    };
    let hello = match handshake {
        Ok(Ok(hello)) => hello,
        Ok(Err(reason)) => return fail(wire, peer, None, reason, &context.close_log).await,
        Err(_) => {
            Counters::add(&context.state.counters().handshake_timeouts);
            let reason = CloseReason::HelloTimeout {
                seconds: context.hello_timeout.as_secs_f64(),
            };
            return fail(wire, peer, None, reason, &context.close_log).await;
        }
    };
    let Ok(_permit) = Arc::clone(&budgets.sessions).try_acquire_owned() else {
        Counters::add(&context.state.counters().connections_refused);
        warn!(
            peer:% = peer, agent_id:? = hello.agent_id, limit = budgets.max_connections;
            "agent refused: central is at its connection limit"
        );
        let message = format!(
            "central is at its limit of {} connections",
            budgets.max_connections
        );
        wire.close_with(ErrorCode::Busy, message).await;
        return;
    };
    drop(slot);
    let agent_id = hello.agent_id.clone();
    let connected = {
        let mut state = context.state.write();
        let connected = state.connect(&hello, now_unix());
        let removed = state.take_removed();
        if let Some(journal) = &context.journal {
            journal.removed(&removed);
        }
        connected
    };
    let last_sequence = match connected {
        Ok(last) => last,
        Err(refused) => {
            let reason = match refused {
                Refused::TableFull { max } => CloseReason::AgentTableFull { max },
                Refused::TooManyNew => CloseReason::TooManyNewAgents,
            };
            return fail(wire, peer, Some(&agent_id), reason, &context.close_log).await;
        }
    };
    let registered = Registered {
        state: &context.state,
        agent_id: &agent_id,
    };
    info!(
        peer:% = peer, agent_id:? = agent_id, hostname:? = hello.hostname,
        interface:? = hello.interface, instance = hello.instance, last_sequence,
        protocol_version = wire.version();
        "agent connected"
    );
    let result = async {
        wire.queue(&Message::Welcome(Welcome {
            central_version: env!("CARGO_PKG_VERSION").into(),
            last_sequence,
        }))?;
        wire.flush().await?;
        stream_batches(&mut wire, context, &hello, &mut stop).await
    }
    .await;
    drop(registered);
    match result {
        Ok(()) => info!(peer:% = peer, agent_id:? = agent_id; "agent disconnected"),
        Err(reason) => fail(wire, peer, Some(&agent_id), reason, &context.close_log).await,
    }
}

/// Preambles both ways, then the agent's `Hello` with a valid token.
async fn handshake(wire: &mut Wire, context: &Context) -> Result<Hello, CloseReason> {
    wire.read_preamble().await?;
    wire.write_preamble().await?;
    let hello = match wire.read_message(context.frame_timeout).await? {
        Some((Message::Hello(hello), _)) => hello,
        Some((other, _)) => {
            return Err(CloseReason::Unexpected {
                got: other.name(),
                when: "instead of Hello",
            });
        }
        None => return Err(CloseReason::HandshakeClosed { buffered: 0 }),
    };
    if hello.token.is_empty() {
        return Err(CloseReason::Unauthorized { reason: "no token" });
    }
    if !context.token.matches(&hello.token) {
        return Err(CloseReason::Unauthorized {
            reason: "wrong token",
        });
    }
    Ok(hello)
}

/// Applies batches and acknowledges each until the agent closes or central stops. With a
/// journal, a batch is acknowledged once its record is synced (a duplicate once the record
/// that applied it first is), so an `Ack` survives a crash of central.
async fn stream_batches(
    wire: &mut Wire,
    context: &Context,
    hello: &Hello,
    stop: &mut broadcast::Receiver<()>,
) -> Result<(), CloseReason> {
    let agent_id = hello.agent_id.as_str();
    let instance = hello.instance;
    loop {
        let message = tokio::select! {
            message = wire.read_message(context.frame_timeout) => message?,
            _ = stop.recv() => {
                wire.flush().await?;
                return Err(CloseReason::Shutdown);
            }
        };
        let Some((message, payload)) = message else {
            wire.flush().await?;
            return Ok(());
        };
        match message.into_batch() {
            Ok((batch, flows)) => {
                let sequence = batch.sequence;
                // Copied only when exported: the state takes the batch.
                let exported = context.event_logs.as_ref().map(|_| {
                    (
                        batch.events.clone(),
                        flows.as_ref().map(|(f, _)| f.clone()).unwrap_or_default(),
                    )
                });
                let (applied, ticket) = {
                    let now = now_unix();
                    let mut state = context.state.write();
                    let applied = state.apply_with_flows(agent_id, instance, batch, flows, now);
                    let ticket = context.journal.as_ref().map(|journal| match applied {
                        Applied::New => journal.append(&Record {
                            agent_id,
                            hostname: &hello.hostname,
                            interface: &hello.interface,
                            probe_version: &hello.probe_version,
                            instance,
                            received_unix: now,
                            payload: &payload,
                        }),
                        Applied::Duplicate => journal.newest(),
                    });
                    (applied, ticket)
                };
                if let (Applied::New, Some(logs), Some((events, flows))) =
                    (applied, &context.event_logs, exported)
                {
                    logs.record(hello, events, flows);
                }
                if let (Some(journal), Some(ticket)) = (&context.journal, ticket) {
                    wire.flush().await?;
                    if journal.durable(ticket).await.is_err() {
                        return Err(CloseReason::Shutdown);
                    }
                }
                wire.queue(&Message::Ack(Ack { sequence }))?;
            }
            Err(Message::Error(ErrorMessage { code, message })) => {
                // Logged: at most a line's worth of what the peer wrote.
                let message = message.chars().take(256).collect();
                return Err(CloseReason::PeerError { code, message });
            }
            Err(other) => {
                return Err(CloseReason::Unexpected {
                    got: other.name(),
                    when: "after Hello",
                });
            }
        }
    }
}

/// Logs the reason (within `log`'s budget), tells the peer when the protocol says so, and
/// closes.
async fn fail(
    mut wire: Wire,
    peer: SocketAddr,
    agent_id: Option<&str>,
    reason: CloseReason,
    log: &CloseLog,
) {
    if let Some(unlogged) = log.admit(&reason, std::time::Instant::now()) {
        if unlogged > 0 {
            warn!(
                unlogged = unlogged, like:% = reason;
                "closed connections not logged one by one since the last line of this reason"
            );
        }
        match (&reason, agent_id) {
            (CloseReason::Shutdown, _) => {
                info!(peer:% = peer, agent_id:? = agent_id; "closed: central is shutting down");
            }
            (CloseReason::NotXdt { .. }, _) => {
                warn!(peer:% = peer, cause:% = reason; "closed: not an xdt peer");
            }
            (_, Some(agent_id)) => {
                warn!(peer:% = peer, agent_id:? = agent_id, cause:% = reason; "agent connection closed");
            }
            (_, None) => warn!(peer:% = peer, cause:% = reason; "connection closed"),
        }
    }
    if let Some(code) = reason.code() {
        wire.close_with(code, reason.to_string()).await;
    }
}

/// Marks the agent disconnected when the session ends, however it ends.
struct Registered<'a> {
    state: &'a Shared,
    agent_id: &'a str,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.state.write().disconnect(self.agent_id, now_unix());
    }
}
