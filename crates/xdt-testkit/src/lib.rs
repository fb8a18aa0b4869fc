//! Test support shared by xdt's crates: crafted frames ([`frames`]), network namespaces and veth
//! pairs that remove themselves on drop ([`net`]), and the root check of root-only tests
//! ([`skip`]).
#![expect(
    clippy::missing_panics_doc,
    reason = "test support panics on failure, by design"
)]

pub mod frames;
pub mod http;
pub mod lab;
pub mod net;
pub mod process;
pub mod skip;

pub use skip::{root_or_skip, say, skip_outside_ci};
pub use xdt_lab::unique_name;
