//! `xdt-central`: parses the command line, sets up logging and runs the server until SIGINT or
//! SIGTERM. A bad configuration prints what is wrong and exits with status 1.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum, builder::RangedU64ValueParser};
use xdt_central::{Config, OtlpConfig, Token, config};

#[derive(Debug, Parser)]
#[command(
    name = "xdt-central",
    version,
    about = "xdt central server: receives agents' telemetry, serves the dashboard, /metrics.json and /metrics, pushes OTLP"
)]
struct Cli {
    /// Address for agents' telemetry connections.
    #[arg(long, env = "XDT_TELEMETRY_LISTEN", default_value = config::DEFAULT_TELEMETRY_LISTEN, value_name = "ADDR:PORT")]
    telemetry_listen: SocketAddr,
    /// Address of the dashboard, /metrics.json, /metrics and /healthz.
    #[arg(long, env = "XDT_HTTP_LISTEN", default_value = config::DEFAULT_HTTP_LISTEN, value_name = "ADDR:PORT")]
    http_listen: SocketAddr,
    /// File holding the shared agent token (surrounding whitespace is ignored).
    #[arg(long, env = "XDT_TOKEN_FILE", value_name = "PATH")]
    token_file: PathBuf,
    /// OpenTelemetry collector to push metrics to over OTLP/HTTP (http://HOST:4318).
    #[arg(long, env = "XDT_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Seconds between OTLP pushes.
    #[arg(long, env = "XDT_OTLP_INTERVAL", default_value_t = config::DEFAULT_OTLP_INTERVAL_SECONDS, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    otlp_interval: u64,
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
    /// Log level (RUST_LOG, if set, refines it).
    #[arg(long, env = "XDT_LOG_LEVEL", value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => Self::Error,
            LogLevel::Warn => Self::Warn,
            LogLevel::Info => Self::Info,
            LogLevel::Debug => Self::Debug,
            LogLevel::Trace => Self::Trace,
        }
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage_error = e.use_stderr();
            let _ = e.print();
            std::process::exit(i32::from(usage_error));
        }
    };
    env_logger::Builder::new()
        .filter_level(cli.log_level.into())
        .parse_env("RUST_LOG")
        .init();
    if let Err(e) = run(cli) {
        eprintln!("xdt-central: error: {e:#}");
        std::process::exit(1);
    }
}

fn config(cli: Cli) -> Result<Config> {
    let token = Token::from_file(&cli.token_file)?;
    let mut config = Config::new(token);
    config.telemetry_listen = cli.telemetry_listen;
    config.http_listen = cli.http_listen;
    config.otlp = cli
        .otlp_endpoint
        .map(|endpoint| OtlpConfig::new(&endpoint, Duration::from_secs(cli.otlp_interval)))
        .transpose()?;
    // systemd's StateDirectory= sets $STATE_DIRECTORY (colon-separated if several).
    config.state_dir = cli.state_dir.or_else(|| {
        std::env::var_os("STATE_DIRECTORY")
            .and_then(|dirs| std::env::split_paths(&dirs).next())
            .filter(|dir| !dir.as_os_str().is_empty())
    });
    config.max_connections = cli.max_connections;
    config.recent_events = cli.recent_events;
    config.max_agents = cli.max_agents;
    config.validate()?;
    Ok(config)
}

fn run(cli: Cli) -> Result<()> {
    let config = config(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(xdt_central::run(config, shutdown_signal()))?;
    Ok(())
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
