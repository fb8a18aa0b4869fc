//! Man pages and shell completions for xdt's binaries, written from the clap definition each
//! binary parses its own command line with, so there is one definition of every flag and the
//! pages cannot drift from it.
//!
//! Each binary calls [`generate_if_asked`] first thing in `main`: when `XDT_GENERATE_DOCS=DIR`
//! is set it writes its pages and completions under `DIR` and exits, without parsing its
//! arguments (the daemons' required flags would refuse an empty command line). `cargo xtask
//! deb` does this with the binaries it just built and packages the result:
//!
//! - `DIR/man/NAME.SECTION` (and `NAME-SUB.SECTION` for each subcommand, recursively)
//! - `DIR/completions/bash/NAME`, `DIR/completions/zsh/_NAME`, `DIR/completions/fish/NAME.fish`

mod completions;
mod generate;
mod man;

pub use generate::{ENV, generate, generate_if_asked};
