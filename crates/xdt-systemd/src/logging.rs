//! One logger per daemon: the journal's native protocol with structured fields when the
//! process runs under systemd with its output connected to the journal, stderr otherwise.
//!
//! Fields given to [`init`] (for instance `AGENT_ID` and `IFACE`) are attached to every record;
//! key-values of a record (`log::info!(peer = addr; "...")`) become fields of that record
//! (`PEER=...`), and on stderr they are printed after the message.

use std::str::FromStr;

use log::LevelFilter;

/// `--log-level`: error, warn, info, debug, trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<Level> for LevelFilter {
    fn from(level: Level) -> Self {
        match level {
            Level::Error => Self::Error,
            Level::Warn => Self::Warn,
            Level::Info => Self::Info,
            Level::Debug => Self::Debug,
            Level::Trace => Self::Trace,
        }
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, true)
    }
}

/// Where records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Journal,
    Stderr,
}

/// Installs the process's logger at `level`. Under systemd (stderr connected to the journal)
/// records carry `fields` plus their own key-values as journal fields and `identifier` as
/// `SYSLOG_IDENTIFIER`; otherwise they go to stderr, where `RUST_LOG` (if set) refines the
/// level per module. Call once, first thing in `main`.
#[must_use = "the destination says where errors before exit should go"]
pub fn init(identifier: &str, level: Level, fields: &[(&str, &str)]) -> Destination {
    if systemd_journal_logger::connected_to_journal() {
        match systemd_journal_logger::JournalLog::new() {
            Ok(journal) => {
                let installed = journal
                    .with_syslog_identifier(identifier.to_owned())
                    .with_extra_fields(fields.iter().copied())
                    .install();
                if installed.is_ok() {
                    log::set_max_level(level.into());
                    return Destination::Journal;
                }
            }
            Err(e) => eprintln!("{identifier}: cannot log to the journal ({e}); using stderr"),
        }
    }
    // The filter lets everything through unless RUST_LOG says otherwise; the level is the
    // global maximum, which `set_level` can raise or lower later.
    let refined = std::env::var_os("RUST_LOG").is_some();
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(LevelFilter::Trace)
        .parse_env("RUST_LOG");
    if builder.try_init().is_ok() {
        let level = LevelFilter::from(level);
        // RUST_LOG may ask for more than `level`: keep what it allows.
        log::set_max_level(if refined {
            log::max_level().max(level)
        } else {
            level
        });
    }
    Destination::Stderr
}

impl Destination {
    /// Reports the error that ends the process: a journal record, or `PROGRAM: error: ...` on
    /// stderr.
    pub fn report_fatal(self, program: &str, error: &dyn std::fmt::Display) {
        match self {
            Self::Journal => log::error!("{error}"),
            Self::Stderr => eprintln!("{program}: error: {error}"),
        }
    }
}

/// Changes the level at run time (a reload); records below it are no longer formatted.
pub fn set_level(level: Level) {
    log::set_max_level(level.into());
}

/// `e` and its sources on one line, `outer: inner: innermost` (a record's `cause`, or a reason
/// shown to the operator).
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
