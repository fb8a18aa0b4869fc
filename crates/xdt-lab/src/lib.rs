//! The one namespace lab of xdt. `xdt demo`, the root tests (through xdt-testkit) and the
//! benchmarks build their client/node topology here, so a change to how a lab is made, torn
//! down or named is made once.
//!
//! Everything a lab creates removes itself on drop, in reverse order, also after a panic:
//! processes (SIGTERM, then SIGKILL after their grace time), registered clean-ups such as
//! detaching a probe, the namespaces (with every interface in them), then the lab's directory.

mod error;
pub mod lab;
pub mod netns;
pub mod process;

pub use error::{Error, Result};
pub use lab::{CleanupResult, Lab, LabSpec, Side};
pub use netns::{Netns, ip, unique_name, veth};
pub use process::{Processes, binary};
