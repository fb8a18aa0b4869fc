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

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use clap::Command;
use clap_complete::Shell;

/// The manual every page belongs to (the header's centre).
const MANUAL: &str = "xdt";

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
    let man = dir.join("man");
    fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    // Every page's footer names the program and version it documents (subcommands have none).
    let source = format!("{name} {}", command.get_version().unwrap_or_default());
    man_pages(
        command,
        &name,
        section,
        source.trim_end(),
        &man,
        &mut written,
    )?;
    for (shell, file) in [
        (Shell::Bash, name.clone()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let shell_dir = dir.join("completions").join(shell.to_string());
        fs::create_dir_all(&shell_dir)
            .with_context(|| format!("cannot create {}", shell_dir.display()))?;
        let mut script = Vec::new();
        clap_complete::generate(shell, command, &name, &mut script);
        let path = shell_dir.join(file);
        fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `page_name.section` for `command`, then one page per subcommand (`page_name-sub`), as git
/// does (`git-commit(1)`), so `man xdt-attach` documents `xdt attach`.
fn man_pages(
    command: &Command,
    page_name: &str,
    section: &str,
    source: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(command.clone())
        .title(page_name.to_owned())
        .section(section)
        .source(source)
        .manual(MANUAL)
        .render(&mut roff)
        .with_context(|| format!("cannot render the man page of {page_name}"))?;
    let path = dir.join(format!("{page_name}.{section}"));
    fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        man_pages(
            sub,
            &format!("{page_name}-{}", sub.get_name()),
            section,
            source,
            dir,
            written,
        )?;
    }
    Ok(())
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
