//! What a binary writes when asked: its man pages and completions under one directory.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use clap::Command;

use crate::{completions, man};

/// The variable naming the directory to write into.
pub const ENV: &str = "XDT_GENERATE_DOCS";

/// If `XDT_GENERATE_DOCS` is set, writes `command`'s man pages (in man `section`) and shell
/// completions there and exits: 0 when all were written, 1 with the failing file named.
pub fn generate_if_asked(command: impl FnOnce() -> Command, section: &str) {
    let Some(dir) = std::env::var_os(ENV) else {
        return;
    };
    let mut command = command();
    let name = command.get_name().to_owned();
    match generate(&mut command, section, Path::new(&dir)) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{name}: error: {ENV}: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Writes the pages and completions of `command` under `dir`; returns the files written.
pub fn generate(command: &mut Command, section: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    command.build();
    let name = command.get_name().to_owned();
    let mut written = Vec::new();
    let man_dir = dir.join("man");
    fs::create_dir_all(&man_dir).with_context(|| format!("cannot create {}", man_dir.display()))?;
    // Every page's footer names the program and version it documents (subcommands have none).
    let source = format!("{name} {}", command.get_version().unwrap_or_default());
    man::pages(
        command,
        &name,
        section,
        source.trim_end(),
        &man_dir,
        &mut written,
    )?;
    completions::write(command, &name, dir, &mut written)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    #[command(name = "demo-bin", version, about = "A test command")]
    struct Demo {
        /// Interface to watch.
        #[arg(long)]
        interface: String,
        #[command(subcommand)]
        command: Option<Sub>,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        /// Attach it.
        Attach,
        /// Manage rules.
        Rules {
            #[command(subcommand)]
            command: RulesSub,
        },
    }

    #[derive(Debug, clap::Subcommand)]
    enum RulesSub {
        /// Load a file.
        Load,
    }

    #[test]
    fn writes_a_page_per_subcommand_and_three_completions() {
        let dir = std::env::temp_dir().join(format!("xdt-clidoc-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut command = <Demo as clap::CommandFactory>::command();
        let written = generate(&mut command, "8", &dir).expect("generate");
        let names: Vec<String> = written
            .iter()
            .map(|p| {
                p.strip_prefix(&dir)
                    .expect("under dir")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "man/demo-bin.8",
                "man/demo-bin-attach.8",
                "man/demo-bin-rules.8",
                "man/demo-bin-rules-load.8",
                "completions/bash/demo-bin",
                "completions/zsh/_demo-bin",
                "completions/fish/demo-bin.fish",
            ]
        );
        let page = fs::read_to_string(dir.join("man/demo-bin.8")).expect("page");
        assert!(page.contains(".TH demo-bin 8"), "{page}");
        let version = env!("CARGO_PKG_VERSION");
        let sub = fs::read_to_string(dir.join("man/demo-bin-attach.8")).expect("page");
        assert!(
            sub.contains(&format!(
                ".TH demo-bin-attach 8  \"demo-bin {version}\" xdt"
            )),
            "{sub}"
        );
        assert!(page.contains("interface"), "{page}");
        let sub = fs::read_to_string(dir.join("man/demo-bin-rules-load.8")).expect("page");
        assert!(sub.contains("Load a file"), "{sub}");
        let bash = fs::read_to_string(dir.join("completions/bash/demo-bin")).expect("bash");
        assert!(bash.contains("--interface"), "{bash}");
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
