//! The xdt datapath in user space: loads and attaches the XDP probe built from bpf/, pins it
//! under /sys/fs/bpf/xdt/netns-<N>/<interface>/ ([`paths`]), and opens an attached probe once
//! ([`attached::AttachedProbe`]) to install rule sets atomically and read counters, labels and
//! sampled events. Every kernel feature used and its minimum Linux version is listed in
//! docs/datapath.md.

pub mod attach;
pub mod attached;
pub mod error;
pub mod events;
pub mod flows;
pub mod labels;
pub mod ledger;
pub mod maps;
pub mod paths;
pub mod probe;
pub mod rules;
pub mod stats;
pub mod steer;
pub mod sys;
#[cfg(feature = "test-objects")]
pub mod testing;

pub use error::{Error, Result};
