//! `xdt-agent`: parses flags (or a config file, or their environment variables), sets up
//! logging (the journal under systemd), turns signals into [`Control`]s and runs the agent.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::Parser;
use log::{error, info};
use tokio::sync::mpsc::UnboundedSender;
use xdt_agent::{
    Config, Control, default_agent_id,
    flows::FlowConfig,
    read_token,
    source::MapSelector,
    steer::{BindMode, Reinject, SteerConfig},
};
use xdt_systemd::{config_file, logging};

#[derive(Debug, Parser)]
#[command(
    name = "xdt-agent",
    version,
    about = "Streams the XDP probe's telemetry of one interface to xdt-central",
    args_override_self = true
)]
struct Args {
    /// KEY=VALUE file of these flags' environment variables (`XDT_CENTRAL=10.0.0.1:50051`),
    /// read at start and again at SIGHUP. The command line wins over it, it over the
    /// environment.
    #[arg(long, env = "XDT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Interface whose pinned probe (xdt attach) is read.
    #[arg(
        short = 'i',
        long,
        env = "XDT_INTERFACE",
        value_name = "IF",
        required_unless_present = "check_heartbeat"
    )]
    interface: Option<String>,
    /// Central's telemetry address.
    #[arg(
        long,
        env = "XDT_CENTRAL",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:50051"
    )]
    central: String,
    /// This agent's name at central (default: HOST/INTERFACE, e.g. node1/eth0).
    #[arg(long, env = "XDT_AGENT_ID")]
    agent_id: Option<String>,
    /// File holding the shared token [default: the systemd credential `token`, i.e.
    /// $CREDENTIALS_DIRECTORY/token].
    #[arg(long, env = "XDT_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
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
    /// Sampled events kept while central is unreachable (oldest dropped first, counted); half
    /// of them pending, or half a frame's bytes (512 KiB), starts a batch before the interval
    /// ends.
    #[arg(long, env = "XDT_BUFFER_EVENTS", default_value_t = 100_000)]
    buffer_events: usize,
    /// Flow records for central kept while it is unreachable (oldest dropped first, counted);
    /// half of them pending, or half a frame's bytes (512 KiB), starts a batch before the
    /// interval ends.
    #[arg(long, env = "XDT_BUFFER_FLOWS", default_value_t = 100_000)]
    buffer_flows: usize,
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
    /// Microseconds the steering thread keeps checking its rings after the last frame before it
    /// sleeps (0-10000; 0: sleep at once). A frame within it needs no wake-up of the thread,
    /// which costs tens of microseconds of latency; the spin costs CPU while traffic trickles.
    #[arg(
        long,
        env = "XDT_STEER_SPIN",
        default_value_t = xdt_agent::steer::DEFAULT_SPIN_MICROS,
        value_name = "MICROSECONDS"
    )]
    steer_spin: u64,
    /// Run the steering thread on this CPU (default: where the scheduler puts it), e.g. the
    /// CPU that handles the steered receive queue's interrupts.
    #[arg(long, env = "XDT_STEER_CPU", value_name = "CPU")]
    steer_cpu: Option<usize>,
    /// Keep every capability after setup (default: drop them all once the maps and sockets are
    /// open).
    #[arg(long, env = "XDT_KEEP_CAPABILITIES")]
    keep_capabilities: bool,
    /// Write the time to FILE every 2 s while the agent is healthy (the systemd watchdog's
    /// condition: the main loop runs and the steering thread goes round), for a liveness probe
    /// that runs --check-heartbeat.
    #[arg(long, env = "XDT_HEARTBEAT", value_name = "FILE")]
    heartbeat: Option<PathBuf>,
    /// A flow without packets for this long ends (flowEndReason idle).
    #[arg(
        long,
        env = "XDT_FLOW_IDLE",
        default_value_t = 15.0,
        value_name = "SECONDS"
    )]
    flow_idle: f64,
    /// A flow this long exports what it counted and goes on (flowEndReason active timeout).
    #[arg(
        long,
        env = "XDT_FLOW_ACTIVE",
        default_value_t = 60.0,
        value_name = "SECONDS"
    )]
    flow_active: f64,
    /// Flows the agent keeps at most; a new flow beyond goes out at once (flowEndReason lack
    /// of resources), counted.
    #[arg(
        long,
        env = "XDT_FLOW_MAX",
        default_value_t = 262_144,
        value_name = "N"
    )]
    flow_max: usize,
    /// Export ended flows as IPFIX over UDP to this collector (repeatable; in the environment
    /// and config file, comma-separated).
    #[arg(
        long,
        env = "XDT_IPFIX",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    ipfix: Vec<String>,
    /// Seconds between two sendings of the IPFIX templates to each collector.
    #[arg(
        long,
        env = "XDT_IPFIX_TEMPLATE_REFRESH",
        default_value_t = 60.0,
        value_name = "SECONDS"
    )]
    ipfix_template_refresh: f64,
    /// IPFIX observation domain id [default: the interface's index].
    #[arg(long, env = "XDT_IPFIX_DOMAIN", value_name = "ID")]
    ipfix_domain: Option<u32>,
    /// Exit 0 if the heartbeat in FILE is at most --max-age old, else say why and exit 1 (a
    /// Kubernetes exec liveness probe).
    #[arg(long, value_name = "FILE")]
    check_heartbeat: Option<PathBuf>,
    /// The oldest heartbeat --check-heartbeat accepts.
    #[arg(
        long,
        default_value_t = 30.0,
        value_name = "SECONDS",
        requires = "check_heartbeat"
    )]
    max_age: f64,
    /// Delete the re-entry pair a stopped agent of --interface left behind, then exit
    /// (systemd's ExecStopPost: the agent itself has no capability left to do it).
    #[arg(long)]
    cleanup: bool,
    /// Log level (the journal under systemd, else stderr, where RUST_LOG refines it).
    #[arg(long, env = "XDT_LOG_LEVEL", value_enum, default_value_t = logging::Level::Info)]
    log_level: logging::Level,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum XskMode {
    Auto,
    Copy,
    Zerocopy,
}

/// `XDT_TEST_FAULTS`: test-only faults, comma-separated. `hang-on-sigusr2` makes SIGUSR2 hang
/// the main loop (the VM test's watchdog check); unset, SIGUSR2 keeps its default action.
const TEST_FAULTS: &str = "XDT_TEST_FAULTS";

fn main() {
    xdt_clidoc::generate_if_asked(<Args as clap::CommandFactory>::command, "8");
    let argv: Vec<OsString> = std::env::args_os().collect();
    let args = match config_file::parse::<Args>(|a| a.config.as_deref(), "XDT_CONFIG") {
        Ok(args) => args,
        Err(config_file::Error::Arguments(e)) => e.exit(),
        Err(e) => {
            eprintln!("xdt-agent: error: {e}");
            std::process::exit(2);
        }
    };
    if let Some(file) = &args.check_heartbeat {
        check_heartbeat(file, args.max_age);
    }
    let agent_id = args
        .agent_id
        .clone()
        .unwrap_or_else(|| default_agent_id(args.interface()));
    let destination = logging::init(
        "xdt-agent",
        args.log_level,
        &[("AGENT_ID", &agent_id), ("IFACE", args.interface())],
    );
    if let Err(e) = start(&args, argv) {
        destination.report_fatal("xdt-agent", &format!("{e:#}"));
        // A missing token: the unit does not restart on this status (RestartPreventExitStatus=).
        std::process::exit(
            e.downcast_ref::<xdt_systemd::CredentialError>()
                .map_or(1, xdt_systemd::CredentialError::exit_status),
        );
    }
}

impl Args {
    /// Present unless --check-heartbeat was given, which returns before this is asked.
    fn interface(&self) -> &str {
        self.interface.as_deref().unwrap_or_default()
    }
}

/// `--check-heartbeat`: exits 0 with the heartbeat's age, or 1 with what is wrong.
fn check_heartbeat(file: &std::path::Path, max_age: f64) -> ! {
    if !(0.1..=3600.0).contains(&max_age) {
        eprintln!(
            "xdt-agent: error: --max-age must be between 0.1 and 3600 seconds, not {max_age}"
        );
        std::process::exit(2);
    }
    match xdt_agent::heartbeat::check(file, Duration::from_secs_f64(max_age)) {
        Ok(age) => {
            println!("healthy: heartbeat {age:.1?} old");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            std::process::exit(1);
        }
    }
}

fn start(args: &Args, argv: Vec<OsString>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.cleanup {
        return runtime.block_on(async {
            match xdt_agent::steer::reentry::remove_left_behind(args.interface()).await? {
                Some(pair) => info!("deleted the re-entry pair {pair}"),
                None => info!("no re-entry pair of {} to delete", args.interface()),
            }
            Ok(())
        });
    }
    let config = config(args)?;
    let (control, controlled) = tokio::sync::mpsc::unbounded_channel();
    runtime.block_on(async move {
        let signals = tokio::spawn(forward_signals(argv, control));
        let result = xdt_agent::run(config, controlled).await;
        signals.abort();
        result
    })
}

fn config(args: &Args) -> anyhow::Result<Config> {
    if !(0.05..=3600.0).contains(&args.interval) {
        anyhow::bail!(
            "--interval must be between 0.05 and 3600 seconds, not {}",
            args.interval
        );
    }
    for (flag, value) in [
        ("--buffer-batches", args.buffer_batches),
        ("--buffer-events", args.buffer_events),
        ("--buffer-flows", args.buffer_flows),
    ] {
        if value == 0 {
            anyhow::bail!("{flag} must be at least 1, not 0");
        }
    }
    if !(0.1..=60.0).contains(&args.steer_lease) {
        anyhow::bail!(
            "--steer-lease must be between 0.1 and 60 seconds, not {}",
            args.steer_lease
        );
    }
    if args.steer_spin > 10_000 {
        anyhow::bail!(
            "--steer-spin must be between 0 and 10000 microseconds, not {}",
            args.steer_spin
        );
    }
    if let Some(cpu) = args.steer_cpu {
        let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .map_err(|e| anyhow::anyhow!("reading the CPUs the agent may run on: {e}"))?;
        if !allowed.is_set(cpu).unwrap_or(false) {
            let cpus: Vec<String> = (0..nix::sched::CpuSet::count())
                .filter(|&c| allowed.is_set(c).unwrap_or(false))
                .map(|c| c.to_string())
                .collect();
            anyhow::bail!(
                "--steer-cpu {cpu} is not a CPU the agent may run on ({})",
                cpus.join(",")
            );
        }
    }
    for (flag, value, range) in [
        ("--flow-idle", args.flow_idle, 1.0..=3600.0),
        ("--flow-active", args.flow_active, 1.0..=86400.0),
        (
            "--ipfix-template-refresh",
            args.ipfix_template_refresh,
            1.0..=86400.0,
        ),
    ] {
        if !range.contains(&value) {
            anyhow::bail!(
                "{flag} must be between {} and {} seconds, not {value}",
                range.start(),
                range.end()
            );
        }
    }
    if !(1..=16_777_216).contains(&args.flow_max) {
        anyhow::bail!(
            "--flow-max must be between 1 and 16777216, not {}",
            args.flow_max
        );
    }
    let token_file = xdt_systemd::credential(
        args.token_file.as_deref(),
        "token",
        "--token-file (XDT_TOKEN_FILE)",
    )
    .map_err(anyhow::Error::msg)?;
    Ok(Config {
        interface: args.interface().to_owned(),
        central: args.central.clone(),
        agent_id: args
            .agent_id
            .clone()
            .unwrap_or_else(|| default_agent_id(args.interface())),
        token: read_token(&token_file)?,
        interval: Duration::from_secs_f64(args.interval),
        foreign_map: args
            .map_name
            .clone()
            .map(MapSelector::Name)
            .or(args.map_id.map(MapSelector::Id)),
        max_batches: args.buffer_batches,
        max_events: args.buffer_events,
        steer: (!args.no_steer).then(|| SteerConfig {
            reinject: args.egress.clone().map_or(Reinject::Host, Reinject::Egress),
            mode: match args.xsk_mode {
                XskMode::Auto => BindMode::Auto,
                XskMode::Copy => BindMode::Copy,
                XskMode::Zerocopy => BindMode::ZeroCopy,
            },
            frames: args.xsk_frames,
            lease: Duration::from_secs_f64(args.steer_lease),
            drop_capabilities: false,
            spin: Duration::from_micros(args.steer_spin),
            cpu: args.steer_cpu,
        }),
        drop_capabilities: !args.keep_capabilities,
        heartbeat: args.heartbeat.clone(),
        flows: FlowConfig {
            idle: Duration::from_secs_f64(args.flow_idle),
            active: Duration::from_secs_f64(args.flow_active),
            max_flows: args.flow_max,
            ipfix: args.ipfix.clone(),
            template_refresh: Duration::from_secs_f64(args.ipfix_template_refresh),
            domain: args.ipfix_domain,
            buffer: args.buffer_flows,
        },
    })
}

/// SIGTERM and SIGINT stop the agent; SIGHUP re-reads the command line's config file and
/// applies it (a bad file is refused, the running configuration stays); SIGUSR2 hangs the
/// main loop if the test fault asks for it.
async fn forward_signals(argv: Vec<OsString>, control: UnboundedSender<Control>) {
    use tokio::signal::unix::{SignalKind, signal};
    let hang_fault = std::env::var(TEST_FAULTS)
        .is_ok_and(|faults| faults.split(',').any(|f| f.trim() == "hang-on-sigusr2"));
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers; stop the agent with SIGKILL");
        return;
    };
    let mut usr2 = if hang_fault {
        signal(SignalKind::user_defined2()).ok()
    } else {
        None
    };
    loop {
        let command = tokio::select! {
            _ = term.recv() => Control::Stop,
            _ = int.recv() => Control::Stop,
            _ = hup.recv() => match reread(&argv) {
                Ok(config) => Control::Reload(Box::new(config)),
                Err(e) => {
                    error!("reload refused, the running configuration stays: {e:#}");
                    continue;
                }
            },
            Some(()) = async {
                match usr2.as_mut() {
                    Some(usr2) => usr2.recv().await,
                    None => std::future::pending().await,
                }
            } => Control::Hang,
        };
        let stop = matches!(command, Control::Stop);
        if control.send(command).is_err() || stop {
            return;
        }
    }
}

/// The configuration from the original command line and the config file's current content.
fn reread(argv: &[OsString]) -> anyhow::Result<Config> {
    let args: Args = config_file::parse_from(argv, |a: &Args| a.config.as_deref(), "XDT_CONFIG")?;
    let config = config(&args)?;
    // Only once everything is valid: a refused reload changes nothing.
    logging::set_level(args.log_level);
    Ok(config)
}
