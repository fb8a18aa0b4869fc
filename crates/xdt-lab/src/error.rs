//! What can go wrong while building a lab; each variant names the command or path involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {program}: {source} (is it installed?)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("namespace {0} exists: is another lab using it? (if not: ip netns del {0})")]
    NamespaceExists(String),
    #[error(
        "{name} is not in {} (build every binary first: cargo build [--release] --workspace)",
        dir.display()
    )]
    MissingBinary { name: String, dir: PathBuf },
    #[error("a thread in namespace {0} panicked")]
    ThreadPanicked(String),
    #[error("setns into {0}: {1}")]
    Setns(String, nix::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
