//! The xdt datapath in user space: loads and attaches the XDP probe built from bpf/, pins it
//! under /sys/fs/bpf/xdt/<interface>/, installs rule sets atomically, and reads counters and
//! sampled events from the pinned maps. Every kernel feature used and its minimum Linux version
//! is listed in docs/datapath.md.

pub mod attach;
pub mod error;
pub mod events;
pub mod ledger;
pub mod paths;
pub mod probe;
pub mod rules;
pub mod stats;
pub mod steer;
pub mod sys;

pub use error::{Error, Result};
