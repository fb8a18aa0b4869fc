//! Shell completions (bash, zsh, fish) from clap_complete, each where its shell looks for it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use clap::Command;
use clap_complete::Shell;

/// Writes `name`'s completions under `dir/completions/SHELL/`, adding each file to `written`.
pub(crate) fn write(
    command: &mut Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    for (shell, file) in [
        (Shell::Bash, name.to_owned()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let shell_dir = dir.join("completions").join(shell.to_string());
        fs::create_dir_all(&shell_dir)
            .with_context(|| format!("cannot create {}", shell_dir.display()))?;
        let mut script = Vec::new();
        clap_complete::generate(shell, command, name, &mut script);
        let path = shell_dir.join(file);
        fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(())
}
