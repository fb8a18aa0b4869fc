//! What xdt's daemons (`xdt-agent`, `xdt-central`, `xdt-service-health`) share for running
//! under systemd, and equally well from a shell:
//!
//! - [`logging`]: records go to the journal with structured fields when stderr is connected to
//!   it (`$JOURNAL_STREAM`), to stderr otherwise; the level can change at run time (SIGHUP).
//! - [`notify`]: `READY=1`, `STATUS=`, `RELOADING=1`, `WATCHDOG=1` and `STOPPING=1` (sd_notify(3));
//!   no-ops outside systemd.
//! - [`config_file`]: a `KEY=VALUE` file of the daemon's environment variable names (the
//!   syntax of systemd's `EnvironmentFile=`), read at start and again at SIGHUP.
//! - [`credential`](mod@credential): where a secret file is, from its flag or systemd's
//!   `LoadCredential=`; a unit's placeholder for a missing file is refused with the file's name.
//! - [`input`]: bounded reads of the files an operator hands xdt (config, token, rules) and
//!   clipped echoes of bad values; the daemons and the `xdt` command read them all through it.

pub mod config_file;
pub mod credential;
pub mod input;
pub mod logging;
pub mod notify;

pub use credential::{CredentialError, EXIT_CONFIG, credential};
