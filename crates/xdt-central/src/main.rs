//! `xdt-central`: parses the command line (or a config file, or the environment), sets up
//! logging (the journal under systemd), tells systemd when it listens and how it is doing, and
//! runs the server until SIGINT or SIGTERM. SIGHUP re-reads the config file. A bad
//! configuration prints what is wrong and exits with status 1.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::{Parser, builder::RangedU64ValueParser};
use log::{error, info, warn};
use xdt_central::{Central, Config, HttpHealth, OtlpConfig, Token, config, state::Shared};
use xdt_systemd::{config_file, logging, notify::Notifier};

#[derive(Debug, Parser)]
#[command(
    name = "xdt-central",
    version,
    about = "xdt central server: receives agents' telemetry, serves the dashboard, /metrics.json and /metrics, pushes OTLP",
    args_override_self = true
)]
struct Cli {
    /// KEY=VALUE file of these flags' environment variables (`XDT_HTTP_LISTEN=[::]:8080`), read
    /// at start and again at SIGHUP. The command line wins over it, it over the environment.
    #[arg(long, env = "XDT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address for agents' telemetry connections.
    #[arg(long, env = "XDT_TELEMETRY_LISTEN", default_value = config::DEFAULT_TELEMETRY_LISTEN, value_name = "ADDR:PORT")]
    telemetry_listen: SocketAddr,
    /// Address of the dashboard, /metrics.json, /metrics and /healthz.
    #[arg(long, env = "XDT_HTTP_LISTEN", default_value = config::DEFAULT_HTTP_LISTEN, value_name = "ADDR:PORT")]
    http_listen: SocketAddr,
    /// File holding the shared agent token (surrounding whitespace is ignored) [default: the
    /// systemd credential `token`, i.e. $CREDENTIALS_DIRECTORY/token].
    #[arg(long, env = "XDT_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// OpenTelemetry collector to push metrics to over OTLP/HTTP (http://HOST:4318).
    #[arg(long, env = "XDT_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Seconds between OTLP pushes.
    #[arg(long, env = "XDT_OTLP_INTERVAL", default_value_t = config::DEFAULT_OTLP_INTERVAL_SECONDS, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    otlp_interval: u64,
    /// Also push every sampled event and steered-packet inspection to the collector as an
    /// OTLP log record (needs --otlp-endpoint).
    #[arg(long, env = "XDT_OTLP_LOGS", requires = "otlp_endpoint")]
    otlp_logs: bool,
    /// Directory for state.json, so a restart neither loses nor double-counts batches
    /// [default: $STATE_DIRECTORY when systemd sets it].
    #[arg(long, env = "XDT_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Most simultaneous telemetry connections; more are refused with Busy.
    #[arg(long, env = "XDT_MAX_CONNECTIONS", default_value_t = config::DEFAULT_MAX_CONNECTIONS, value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_connections: usize,
    /// Recent events kept per agent for the dashboard.
    #[arg(long, env = "XDT_RECENT_EVENTS", default_value_t = config::DEFAULT_RECENT_EVENTS, value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=xdt_central::state::MAX_RECENT_EVENTS as u64))]
    recent_events: usize,
    /// Most agents kept; a new agent beyond is refused with Busy.
    #[arg(long, env = "XDT_MAX_AGENTS", default_value_t = config::DEFAULT_MAX_AGENTS, value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_agents: usize,
    /// Most HTTP connections at once (16 per client address); more get 503.
    #[arg(long, env = "XDT_HTTP_MAX_CONNECTIONS", default_value_t = config::DEFAULT_HTTP_MAX_CONNECTIONS, value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
    http_max_connections: usize,
    /// Seconds an HTTP client has to send its request head; slower ones get 408.
    #[arg(long, env = "XDT_HTTP_TIMEOUT", default_value_t = config::DEFAULT_HTTP_TIMEOUT_SECONDS, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=600))]
    http_timeout: u64,
    /// Most telemetry connections still authenticating at once; when all are taken, a new one
    /// pushes out the oldest if it has waited a second, else it is closed. They never take
    /// --max-connections slots.
    #[arg(long, env = "XDT_MAX_HANDSHAKES", default_value_t = config::DEFAULT_MAX_HANDSHAKES, value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    max_handshakes: usize,
    /// Seconds after which an agent without a connection is removed (counted and logged).
    #[arg(long, env = "XDT_AGENT_EXPIRY", default_value_t = config::DEFAULT_AGENT_EXPIRY_SECONDS, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=10 * 365 * 24 * 3600))]
    agent_expiry: u64,
    /// Log level (the journal under systemd, else stderr, where RUST_LOG refines it).
    #[arg(long, env = "XDT_LOG_LEVEL", value_enum, default_value_t = logging::Level::Info)]
    log_level: logging::Level,
}

fn main() {
    xdt_clidoc::generate_if_asked(<Cli as clap::CommandFactory>::command, "8");
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match config_file::parse::<Cli>(|c| c.config.as_deref(), "XDT_CONFIG") {
        Ok(cli) => cli,
        Err(config_file::Error::Arguments(e)) => {
            // Usage errors exit 1 like every other bad configuration; --help and --version 0.
            let code = i32::from(e.use_stderr());
            let _ = e.print();
            std::process::exit(code);
        }
        Err(e) => {
            eprintln!("xdt-central: error: {e}");
            std::process::exit(1);
        }
    };
    let destination = logging::init("xdt-central", cli.log_level, &[]);
    if let Err(e) = run(cli, argv) {
        destination.report_fatal("xdt-central", &format!("{e:#}"));
        // A missing token: the unit does not restart on this status (RestartPreventExitStatus=).
        std::process::exit(
            e.downcast_ref::<xdt_systemd::CredentialError>()
                .map_or(1, xdt_systemd::CredentialError::exit_status),
        );
    }
}

fn config(cli: Cli) -> Result<Config> {
    let token_file = xdt_systemd::credential(
        cli.token_file.as_deref(),
        "token",
        "--token-file (XDT_TOKEN_FILE)",
    )
    .map_err(anyhow::Error::msg)?;
    let token = Token::from_file(&token_file)?;
    let mut config = Config::new(token);
    config.telemetry_listen = cli.telemetry_listen;
    config.http_listen = cli.http_listen;
    config.otlp = cli
        .otlp_endpoint
        .map(|endpoint| OtlpConfig::new(&endpoint, Duration::from_secs(cli.otlp_interval)))
        .transpose()?
        .map(|otlp| {
            if cli.otlp_logs {
                otlp.with_logs()
            } else {
                otlp
            }
        });
    // systemd's StateDirectory= sets $STATE_DIRECTORY (colon-separated if several).
    config.state_dir = cli.state_dir.or_else(|| {
        std::env::var_os("STATE_DIRECTORY")
            .and_then(|dirs| std::env::split_paths(&dirs).next())
            .filter(|dir| !dir.as_os_str().is_empty())
    });
    config.max_connections = cli.max_connections;
    config.recent_events = cli.recent_events;
    config.max_agents = cli.max_agents;
    config.http_max_connections = cli.http_max_connections;
    config.http_timeout = Duration::from_secs(cli.http_timeout);
    config.max_handshakes = cli.max_handshakes;
    config.agent_expiry = Duration::from_secs(cli.agent_expiry);
    config.validate()?;
    Ok(config)
}

fn run(cli: Cli, argv: Vec<OsString>) -> Result<()> {
    let config = config(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let notifier = Notifier::new();
        let central = Central::bind(config.clone()).await?;
        let listening = format!(
            "telemetry on {}, dashboard on http://{}/",
            central.telemetry_addr(),
            central.http_addr()
        );
        notifier.ready(&listening);
        let status = tokio::spawn(report_status(
            central.state(),
            central.http_health(),
            notifier.clone(),
            listening,
        ));
        let reloads = tokio::spawn(reload_on_hangup(argv, config, notifier.clone()));
        let result = central
            .run(async {
                shutdown_signal().await;
                notifier.stopping("saving state, closing connections");
            })
            .await;
        status.abort();
        reloads.abort();
        result
    })?;
    Ok(())
}

/// `STATUS=` (agents, event rate) and `WATCHDOG=1` every few seconds. Feeding the watchdog
/// takes the state's lock and asks the HTTP side for `/healthz` first, so a deadlocked state,
/// a starved runtime or a dead HTTP side gets central restarted.
async fn report_status(state: Shared, http: HttpHealth, notifier: Notifier, listening: String) {
    let period = notifier
        .watchdog_period()
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    let mut ticker = tokio::time::interval(period);
    let mut last: Option<(u64, Instant)> = None;
    loop {
        ticker.tick().await;
        let (agents, connected, events) = {
            let state = state.read();
            let connected = state.agents().filter(|a| a.connected()).count();
            (state.agents().count(), connected, state.total_events())
        };
        let now = Instant::now();
        let rate = last.map_or(0.0, |(before, at)| {
            #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
            let delta = events.saturating_sub(before) as f64;
            delta / now.duration_since(at).as_secs_f64().max(1e-3)
        });
        last = Some((events, now));
        match http.check().await {
            Ok(()) => {
                notifier.status(&format!(
                    "{connected} of {agents} agents connected, {rate:.0} events/s; {listening}"
                ));
                notifier.watchdog();
            }
            Err(e) => {
                error!(cause:% = e; "the HTTP side does not answer; the watchdog is not fed");
                notifier.status(&format!("HTTP side not answering: {e}"));
            }
        }
    }
}

/// SIGHUP: re-read the config file. The log level applies at once; other changes are named as
/// needing a restart (listeners, token and OTLP are set up once).
async fn reload_on_hangup(argv: Vec<OsString>, mut running: Config, notifier: Notifier) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        error!("cannot install the SIGHUP handler; reloads are not possible");
        return;
    };
    while hangup.recv().await.is_some() {
        notifier.reloading();
        match reread(&argv) {
            Ok((level, new)) => {
                logging::set_level(level);
                let changed = running.changed_needing_restart(&new);
                if changed.is_empty() {
                    info!("reloaded: log level {level:?}");
                } else {
                    warn!(
                        "reloaded the log level ({level:?}); changed {} take effect at the next restart",
                        changed.join(", ")
                    );
                }
                running = new;
            }
            Err(e) => error!("reload refused, the running configuration stays: {e:#}"),
        }
        notifier.reloaded("configuration reloaded");
    }
}

fn reread(argv: &[OsString]) -> Result<(logging::Level, Config)> {
    let cli: Cli = config_file::parse_from(argv, |c: &Cli| c.config.as_deref(), "XDT_CONFIG")?;
    let level = cli.log_level;
    Ok((level, config(cli)?))
}

/// Completes at the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        log::error!("cannot install signal handlers; stop central with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
