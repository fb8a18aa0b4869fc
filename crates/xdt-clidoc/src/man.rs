//! Man pages: one for the command and one per subcommand, rendered by clap_mangen.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use clap::Command;

/// The manual every page belongs to (the header's centre).
const MANUAL: &str = "xdt";

/// `page_name.section` for `command`, then one page per subcommand (`page_name-sub`), as git
/// does (`git-commit(1)`), so `man xdt-attach` documents `xdt attach`.
pub(crate) fn pages(
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
        pages(
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
