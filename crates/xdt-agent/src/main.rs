//! `xdt-agent`: parses flags (or their environment variables) and runs the agent.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use xdt_agent::{
    Config, default_agent_id, read_token,
    source::MapSelector,
    steer::{BindMode, Reinject, SteerConfig},
};

#[derive(Debug, Parser)]
#[command(
    name = "xdt-agent",
    version,
    about = "Streams the XDP probe's telemetry of one interface to xdt-central"
)]
struct Args {
    /// Interface whose pinned probe (xdt attach) is read.
    #[arg(short = 'i', long, env = "XDT_INTERFACE", value_name = "IF")]
    interface: String,
    /// Central's telemetry address.
    #[arg(
        long,
        env = "XDT_CENTRAL",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:50051"
    )]
    central: String,
    /// This agent's name at central (default: the host name).
    #[arg(long, env = "XDT_AGENT_ID")]
    agent_id: Option<String>,
    /// File holding the shared token (for example a systemd credential).
    #[arg(long, env = "XDT_TOKEN_FILE", value_name = "PATH")]
    token_file: PathBuf,
    /// Seconds between two batches.
    #[arg(
        long,
        env = "XDT_INTERVAL",
        default_value_t = 1.0,
        value_name = "SECONDS"
    )]
    interval: f64,
    /// Export this existing map of another XDP program (struct pkt_stats: 8 x u64) instead of
    /// xdt's probe.
    #[arg(
        long,
        env = "XDT_MAP_NAME",
        conflicts_with = "map_id",
        value_name = "NAME"
    )]
    map_name: Option<String>,
    /// Like --map-name, by map id.
    #[arg(long, env = "XDT_MAP_ID", value_name = "ID")]
    map_id: Option<u32>,
    /// Unacknowledged batches kept while central is unreachable.
    #[arg(long, env = "XDT_BUFFER_BATCHES", default_value_t = 3600)]
    buffer_batches: usize,
    /// Sampled events kept while central is unreachable (oldest dropped first, counted).
    #[arg(long, env = "XDT_BUFFER_EVENTS", default_value_t = 100_000)]
    buffer_events: usize,
    /// Do not open AF_XDP sockets: packets of `steer` rules stay on the kernel path.
    #[arg(long, env = "XDT_NO_STEER")]
    no_steer: bool,
    /// Re-inject steered packets out of this interface unchanged (bump in the wire) instead of
    /// into the host stack through the agent's re-entry veth pair.
    #[arg(long, env = "XDT_EGRESS", value_name = "IF")]
    egress: Option<String>,
    /// AF_XDP bind mode: auto (zero-copy where the driver can, else copy), copy, zerocopy.
    #[arg(long, env = "XDT_XSK_MODE", value_enum, default_value_t = XskMode::Auto)]
    xsk_mode: XskMode,
    /// UMEM frames (4 KiB each) per AF_XDP socket: a power of two from 64 to 65536.
    #[arg(long, env = "XDT_XSK_FRAMES", default_value_t = 2048)]
    xsk_frames: u32,
    /// Seconds the probe keeps steering to the agent without a renewal (fail-open bound for a
    /// hung agent).
    #[arg(
        long,
        env = "XDT_STEER_LEASE",
        default_value_t = 1.0,
        value_name = "SECONDS"
    )]
    steer_lease: f64,
    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, env = "XDT_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum XskMode {
    Auto,
    Copy,
    Zerocopy,
}

fn main() {
    let args = Args::parse();
    env_logger::Builder::new()
        .parse_filters(&args.log_level)
        .parse_default_env()
        .init();
    if let Err(e) = start(args) {
        eprintln!("xdt-agent: error: {e:#}");
        std::process::exit(1);
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    if !(0.05..=3600.0).contains(&args.interval) {
        anyhow::bail!(
            "--interval must be between 0.05 and 3600 seconds, not {}",
            args.interval
        );
    }
    if !(0.1..=60.0).contains(&args.steer_lease) {
        anyhow::bail!(
            "--steer-lease must be between 0.1 and 60 seconds, not {}",
            args.steer_lease
        );
    }
    let config = Config {
        interface: args.interface,
        central: args.central,
        agent_id: args.agent_id.unwrap_or_else(default_agent_id),
        token: read_token(&args.token_file)?,
        interval: Duration::from_secs_f64(args.interval),
        foreign_map: args
            .map_name
            .map(MapSelector::Name)
            .or(args.map_id.map(MapSelector::Id)),
        max_batches: args.buffer_batches,
        max_events: args.buffer_events,
        max_events_per_batch: 8192,
        steer: (!args.no_steer).then(|| SteerConfig {
            reinject: args.egress.map_or(Reinject::Host, Reinject::Egress),
            mode: match args.xsk_mode {
                XskMode::Auto => BindMode::Auto,
                XskMode::Copy => BindMode::Copy,
                XskMode::Zerocopy => BindMode::ZeroCopy,
            },
            frames: args.xsk_frames,
            lease: Duration::from_secs_f64(args.steer_lease),
        }),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(xdt_agent::run(config, shutdown_signal()))
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
