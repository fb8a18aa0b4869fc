//! The server: [`Central::bind`] opens both listeners and loads the saved state;
//! [`Central::run`] serves until the `shutdown` future completes, then lets sessions end, saves
//! the state and stops the HTTP and OTLP threads.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use log::{error, info, warn};
use tokio::{
    net::TcpListener,
    sync::{broadcast, mpsc},
};

use crate::{
    config::Config,
    error::{Error, Result},
    export::{otlp::Otlp, otlp_logs},
    http::{self, Http, HttpHealth},
    ingest::{self, Context},
    persist::{self, journal::Journal},
    state::{self, Shared, State},
};

/// How long sessions get to end after shutdown is announced (they end at once unless they
/// are finishing an error close).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound, not yet running, central server.
pub struct Central {
    config: Config,
    listener: TcpListener,
    http: http::Bound,
    telemetry_addr: SocketAddr,
    http_addr: SocketAddr,
    state: Shared,
    journal: Option<Arc<Journal>>,
}

impl std::fmt::Debug for Central {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Central")
            .field("telemetry_addr", &self.telemetry_addr)
            .field("http_addr", &self.http_addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Central {
    /// Validates the configuration, loads `state.json`, replays the journal and opens both
    /// listeners.
    pub async fn bind(mut config: Config) -> Result<Self> {
        config.validate()?;
        if let Some((connections, handshakes)) = config.fit_descriptors()? {
            warn!(
                asked_connections = connections, max_connections = config.max_connections,
                asked_handshakes = handshakes, max_handshakes = config.max_handshakes,
                descriptors = config.descriptors_needed();
                "--max-connections and --max-handshakes lowered to fit RLIMIT_NOFILE (raise LimitNOFILE= to allow more)"
            );
        }
        let mut state = State::new(config.max_agents, config.recent_events);
        let mut journal = None;
        if let Some(dir) = &config.state_dir {
            if let Some(saved) = persist::load(dir)? {
                let agents = saved.agents.len();
                persist::restore(&mut state, saved);
                info!(path:% = persist::path(dir).display(), agents; "state loaded");
            } else {
                info!(path:% = persist::path(dir).display(); "no saved state yet");
            }
            let counters = Arc::clone(state.counters());
            journal = Some(Arc::new(Journal::open(dir, &mut state, counters)?));
        }
        let listener = TcpListener::bind(config.telemetry_listen)
            .await
            .map_err(|source| Error::Bind {
                what: "telemetry",
                addr: config.telemetry_listen,
                source,
            })?;
        let telemetry_addr = listener.local_addr().map_err(|source| Error::Bind {
            what: "telemetry",
            addr: config.telemetry_listen,
            source,
        })?;
        let http = http::bind(config.http_listen).await?;
        let http_addr = http.addr;
        Ok(Self {
            config,
            listener,
            http,
            telemetry_addr,
            http_addr,
            state: Shared::new(state),
            journal,
        })
    }

    #[must_use]
    pub fn telemetry_addr(&self) -> SocketAddr {
        self.telemetry_addr
    }

    #[must_use]
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Whether the HTTP side answers, for the watchdog.
    #[must_use]
    pub fn http_health(&self) -> HttpHealth {
        self.http.health.clone()
    }

    /// The configuration in effect (`--max-connections` may have been lowered to fit the
    /// file descriptor limit).
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The live state, for a status line (systemd's `STATUS=`).
    #[must_use]
    pub fn state(&self) -> Shared {
        self.state.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting, closes the sessions, saves the
    /// state and stops the HTTP and OTLP threads.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Self {
            config,
            listener,
            http,
            telemetry_addr,
            http_addr,
            state,
            journal,
        } = self;
        let otlp = match &config.otlp {
            Some(otlp) => Some(Otlp::start(otlp, state.clone())?),
            None => None,
        };
        let event_logs = match config
            .otlp
            .as_ref()
            .and_then(|o| o.logs_endpoint.as_deref())
        {
            Some(endpoint) => {
                match otlp_logs::EventLogExport::start(endpoint, Arc::clone(state.counters())) {
                    Ok(export) => Some(export),
                    Err(e) => {
                        if let Some(otlp) = otlp {
                            stop_blocking(move || otlp.stop()).await;
                        }
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let limits = http::Limits {
            threads: config.http_threads,
            max_connections: config.http_max_connections,
            timeout: config.http_timeout,
            telemetry_max_connections: config.max_connections,
        };
        let http = match Http::start(http, &state, limits) {
            Ok(http) => http,
            Err(e) => {
                if let Some(otlp) = otlp {
                    stop_blocking(move || otlp.stop()).await;
                }
                return Err(e);
            }
        };
        info!(
            version = env!("CARGO_PKG_VERSION"), telemetry:% = telemetry_addr, http:% = http_addr,
            max_connections = config.max_connections, max_agents = config.max_agents;
            "xdt-central listening"
        );

        let (notify_shutdown, _) = broadcast::channel::<()>(1);
        let (done, mut sessions_ended) = mpsc::channel::<()>(1);
        let context = Arc::new(Context {
            state: state.clone(),
            token: config.token.clone(),
            hello_timeout: config.hello_timeout,
            frame_timeout: config.frame_timeout,
            journal: journal.clone(),
            event_logs: event_logs.as_ref().map(otlp_logs::EventLogExport::logs),
            close_log: ingest::close_log::CloseLog::default(),
        });
        let persister = config.state_dir.clone().map(|dir| {
            tokio::spawn(persist::save_loop(
                state.clone(),
                dir,
                journal.clone(),
                config.persist_interval,
                notify_shutdown.subscribe(),
            ))
        });

        let expirer = tokio::spawn(expire_loop(
            state.clone(),
            journal.clone(),
            config.agent_expiry,
            notify_shutdown.subscribe(),
        ));

        tokio::select! {
            () = ingest::accept_loop(listener, context, config.max_connections, config.max_handshakes, notify_shutdown.clone(), done.clone()) => {}
            () = shutdown => info!("shutting down"),
        }

        // The listener is closed; tell every session and wait for them to end.
        let _ = notify_shutdown.send(());
        drop(done);
        if tokio::time::timeout(DRAIN_TIMEOUT, sessions_ended.recv())
            .await
            .is_err()
        {
            warn!("some telemetry sessions did not end in time");
        }
        if let Some(persister) = persister {
            let _ = persister.await;
        }
        let _ = expirer.await;
        let saved = match &config.state_dir {
            Some(dir) => persist::save(&state, dir.clone(), journal.as_ref()).await,
            None => Ok(()),
        };
        http.stop().await;
        stop_blocking(move || {
            if let Some(journal) = journal {
                journal.close();
            }
            if let Some(otlp) = otlp {
                otlp.stop();
            }
            if let Some(event_logs) = event_logs {
                event_logs.stop();
            }
        })
        .await;
        info!("xdt-central stopped");
        saved
    }
}

/// Binds and serves until `shutdown` completes (what the binary calls).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    Central::bind(config).await?.run(shutdown).await
}

async fn stop_blocking(f: impl FnOnce() + Send + 'static) {
    if tokio::task::spawn_blocking(f).await.is_err() {
        error!("stopping a thread panicked");
    }
}

/// Removes agents without a connection for longer than `expiry`, checking a few times per
/// `expiry` (at most every minute), until shutdown.
async fn expire_loop(
    state: Shared,
    journal: Option<Arc<Journal>>,
    expiry: Duration,
    mut stop: broadcast::Receiver<()>,
) {
    let period = (expiry / 4).clamp(Duration::from_millis(100), Duration::from_mins(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.recv() => return,
        }
        let mut state = state.write();
        state.expire(state::now_unix(), expiry.as_secs_f64());
        let removed = state.take_removed();
        if let Some(journal) = &journal {
            journal.removed(&removed);
        }
    }
}
