//! The command line of `xdt` (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use xdt_common::{rules::DEFAULT_MAX_RULES, trie::DEFAULT_TRIE_NODES};

#[derive(Debug, Parser)]
#[command(
    name = "xdt",
    version,
    about = "XDP packet telemetry: attach the probe, manage rules, read counters and sampled events"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Interface {
    /// Network interface the probe is (or will be) attached to.
    #[arg(
        short = 'i',
        long = "interface",
        env = "XDT_INTERFACE",
        value_name = "IF"
    )]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct OptionalInterface {
    /// Network interface the probe is attached to.
    #[arg(
        short = 'i',
        long = "interface",
        env = "XDT_INTERFACE",
        value_name = "IF"
    )]
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    /// Native (driver) mode if the driver supports it, else generic.
    Auto,
    /// Driver mode only.
    Native,
    /// Generic (skb) mode, which every interface supports, slower.
    Generic,
}

/// The order of `xdt flows`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FlowSort {
    Bytes,
    Packets,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probe, attach it to an interface and pin it under /sys/fs/bpf/xdt/IF/.
    Attach {
        #[command(flatten)]
        interface: Interface,
        #[arg(long, env = "XDT_ATTACH_MODE", value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// Rules file to start with (see docs/rules.md); none means count only.
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// Rule slots (fixed until detach).
        #[arg(long, default_value_t = DEFAULT_MAX_RULES, value_name = "N")]
        max_rules: u32,
        /// Trie nodes of 1 KiB for address prefixes longer than /16 (fixed until detach).
        #[arg(long, default_value_t = DEFAULT_TRIE_NODES, value_name = "N")]
        trie_nodes: u32,
        /// Record flows, up to N per table (two tables of about 0.3 KiB an entry: see
        /// docs/flows.md); 0 is off, which costs nothing per packet. Fixed until detach.
        #[arg(long, env = "XDT_FLOWS", default_value_t = 0, value_name = "N")]
        flows: u32,
        #[arg(long)]
        json: bool,
    },
    /// Detach the probe from an interface and remove its pins.
    Detach {
        #[command(flatten)]
        interface: Interface,
    },
    /// Show where the probe is attached: mode, program, maps, rules.
    Status {
        /// Only this interface (default: every attached one).
        #[command(flatten)]
        interface: OptionalInterface,
        #[arg(long)]
        json: bool,
    },
    /// Manage the rules of an attached probe.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Print the interface's counters (the otel demo's names) and per-label counts.
    Stats {
        #[command(flatten)]
        interface: Interface,
        #[arg(long)]
        json: bool,
        /// Print packet and bit rates every interval until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between two lines of --watch.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
        /// Stop --watch after this many lines.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Build a throw-away lab in network namespaces and show live telemetry (needs root).
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Where central serves the dashboard.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
        http_listen: String,
        /// Port central takes telemetry on, on the demo's management link (10.211.9.1) that
        /// the node namespace's agent reaches it through.
        #[arg(long, default_value_t = 50051, value_name = "PORT")]
        telemetry_port: u16,
    },
    /// Print the flows the probe recorded (attach with `--flows N`), straight from the kernel.
    Flows {
        #[command(flatten)]
        interface: Interface,
        #[arg(long)]
        json: bool,
        /// Only the N largest flows.
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        /// What "largest" means.
        #[arg(long, value_enum, default_value_t = FlowSort::Bytes)]
        sort: FlowSort,
    },
    /// Follow sampled packet metadata (rules with `action sample N`).
    Events {
        #[command(flatten)]
        interface: Interface,
        #[arg(long)]
        json: bool,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Append one rule, e.g. `xdt rules add -i eth0 web dst 10.0.0.0/8 proto tcp dport 443`.
    Add {
        #[command(flatten)]
        interface: Interface,
        /// The rule: LABEL [src CIDR] [dst CIDR] [proto P] [dport N[-M]] [priority N] [action A].
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true, value_name = "RULE")]
        rule: Vec<String>,
    },
    /// Delete the rule with this id (as `rules list` numbers them).
    Del {
        #[command(flatten)]
        interface: Interface,
        #[arg(value_name = "ID")]
        id: usize,
    },
    /// List the active rules, in rules-file form (usable as a rules file).
    List {
        #[command(flatten)]
        interface: Interface,
        #[arg(long)]
        json: bool,
    },
    /// Replace every rule with the rules of FILE, atomically; a bad file changes nothing.
    Load {
        #[command(flatten)]
        interface: Interface,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Validate a rules file without changing anything.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Also check it fits the capacity of the probe attached on this interface.
        #[command(flatten)]
        interface: OptionalInterface,
    },
}
