//! Daemon configuration files: `KEY=VALUE` lines whose keys are the environment variables of
//! the daemon's flags (`XDT_CENTRAL=10.0.0.1:50051`), in the syntax of systemd's
//! `EnvironmentFile=` (comments with `#` or `;`, blank lines, values optionally in single or
//! double quotes). A file turns into command-line arguments placed before the real ones, so the
//! command line wins over the file, and the file over the environment.
//!
//! The daemon re-reads the file at SIGHUP with [`parse_from`]; a bad file is refused whole with the
//! line and key named, and the running configuration stays as it was.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::ArgAction;

use crate::input;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}, line {line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("config file {}: {}", path.display(), input::clip_words(&source.to_string()))]
    Invalid { path: PathBuf, source: clap::Error },
    /// The command line itself is wrong, or asks for `--help` or `--version`: for the caller to
    /// print (`clap::Error::print`) and exit with.
    #[error("{0}")]
    Arguments(clap::Error),
}

/// The arguments `path` stands for, checked against the flags of `command`: every key must be
/// the environment variable of a flag (and not `config_key` itself), each at most once.
pub fn arguments(
    command: &clap::Command,
    path: &Path,
    config_key: &str,
) -> Result<Vec<OsString>, Error> {
    let text = input::read_text(path, input::MAX_CONFIG_BYTES).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let line_error = |line: usize, message: String| Error::Line {
        path: path.to_owned(),
        line,
        message,
    };
    let mut seen = Vec::new();
    let mut args = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(line_error(
                line,
                format!("expected KEY=VALUE, not {:?}", input::clip(trimmed)),
            ));
        };
        let key = key.trim();
        let value = unquote(value.trim()).ok_or_else(|| {
            line_error(
                line,
                format!("unbalanced quotes in the value of {}", input::clip(key)),
            )
        })?;
        let flag = command
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|env| env == key) && key != config_key)
            .ok_or_else(|| {
                let known: Vec<String> = command
                    .get_arguments()
                    .filter_map(|arg| arg.get_env()?.to_str().map(str::to_owned))
                    .filter(|env| env != config_key)
                    .collect();
                line_error(
                    line,
                    format!(
                        "unknown key {} (known: {})",
                        input::clip(key),
                        known.join(", ")
                    ),
                )
            })?;
        if seen.contains(&key) {
            return Err(line_error(line, format!("{key} is set twice")));
        }
        seen.push(key);
        let long = flag
            .get_long()
            .ok_or_else(|| line_error(line, format!("{key} cannot be set in a config file")))?;
        match flag.get_action() {
            ArgAction::SetTrue => match value.as_str() {
                "1" | "true" | "yes" | "on" => args.push(format!("--{long}").into()),
                "0" | "false" | "no" | "off" | "" => {}
                other => {
                    return Err(line_error(
                        line,
                        format!("{key} takes true or false, not {:?}", input::clip(other)),
                    ));
                }
            },
            _ => args.push(format!("--{long}={value}").into()),
        }
    }
    Ok(args)
}

/// Parses `P` from the process's command line with the config file named by its
/// `config_flag` (if any) underneath. A bad command line (or `--help`) is
/// [`Error::Arguments`], a bad config file another [`Error`], for the caller to report.
///
/// `P` must set `#[command(args_override_self = true)]` so a flag on the command line can
/// override the same flag from the file.
pub fn parse<P: clap::Parser>(
    config_path: impl Fn(&P) -> Option<&Path>,
    config_key: &str,
) -> Result<P, Error> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    parse_from(&argv, config_path, config_key)
}

/// [`parse`] from `argv` (the command line the process started with), with the config file's
/// current content: what start-up and a reload both do.
pub fn parse_from<P: clap::Parser>(
    argv: &[OsString],
    config_path: impl Fn(&P) -> Option<&Path>,
    config_key: &str,
) -> Result<P, Error> {
    let first = P::try_parse_from(argv).map_err(|e| Error::Arguments(clipped(e)))?;
    match config_path(&first) {
        None => Ok(first),
        Some(path) => reparse(argv, path, config_key),
    }
}

/// `e` with over-long values in its message clipped (clap quotes a bad value whole: a 5 MB
/// `XDT_INTERVAL` made a 5 MB message); help and version output stay as they are.
fn clipped(e: clap::Error) -> clap::Error {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        return e;
    }
    let text = e.render().to_string();
    match input::clip_words(&text) {
        std::borrow::Cow::Borrowed(_) => e,
        std::borrow::Cow::Owned(short) => clap::Error::raw(
            e.kind(),
            short.strip_prefix("error: ").unwrap_or(&short).to_owned(),
        ),
    }
}

/// Parses `P` from `argv` with the config file at `path` underneath.
fn reparse<P: clap::Parser>(argv: &[OsString], path: &Path, config_key: &str) -> Result<P, Error> {
    let command = P::command();
    let from_file = arguments(&command, path, config_key)?;
    let mut combined = Vec::with_capacity(argv.len() + from_file.len());
    combined.extend(argv.first().cloned());
    combined.extend(from_file);
    combined.extend(argv.iter().skip(1).cloned());
    command
        .try_get_matches_from(combined)
        .and_then(|mut matches| P::from_arg_matches_mut(&mut matches))
        .map_err(|source| Error::Invalid {
            path: path.to_owned(),
            source,
        })
}

/// The value without one pair of surrounding quotes; `None` for an unbalanced quote.
fn unquote(value: &str) -> Option<String> {
    for quote in ['"', '\''] {
        if let Some(rest) = value.strip_prefix(quote) {
            return rest.strip_suffix(quote).map(str::to_owned);
        }
        if value.ends_with(quote) && value.len() == 1 {
            return None;
        }
    }
    Some(value.to_owned())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    #[command(args_override_self = true)]
    struct Args {
        #[arg(long, env = "T_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "T_CENTRAL", default_value = "127.0.0.1:50051")]
        central: String,
        #[arg(long, env = "T_INTERVAL", default_value_t = 1.0)]
        interval: f64,
        #[arg(long, env = "T_NO_STEER")]
        no_steer: bool,
    }

    fn file(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A file that removes itself (no tempfile crate for one test).
    mod tempfile_path {
        use super::*;
        pub struct TempPath(pub PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> Self {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir()
                    .join(format!("xdt-config-test-{}-{n}", std::process::id()));
                let mut f = std::fs::File::create(&path).expect("create");
                f.write_all(text.as_bytes()).expect("write");
                Self(path)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("prog")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn file_values_apply_and_the_command_line_wins() {
        let f = file(
            "# agent\n\nT_CENTRAL=\"10.0.0.1:50051\"\n; comment\nT_INTERVAL = 2.5\nT_NO_STEER=yes\n",
        );
        let args: Args = reparse::<Args>(&argv(&[]), &f.0, "T_CONFIG").expect("parse");
        assert_eq!(args.central, "10.0.0.1:50051");
        assert!((args.interval - 2.5).abs() < f64::EPSILON);
        assert!(args.no_steer);
        let args: Args = reparse(&argv(&["--interval", "4"]), &f.0, "T_CONFIG").expect("parse");
        assert!((args.interval - 4.0).abs() < f64::EPSILON);
        assert_eq!(args.central, "10.0.0.1:50051");
    }

    #[test]
    fn long_bad_values_are_clipped_in_errors() {
        let short = |e: &dyn std::fmt::Display| {
            let text = e.to_string();
            assert!(text.len() < 400, "{}", &text[..400]);
            text
        };
        // In a file (which is at most 64 KiB)...
        let long = "9".repeat(60_000);
        let f = file(&format!("T_INTERVAL=x{long}\n"));
        let e = reparse::<Args>(&argv(&[]), &f.0, "T_CONFIG").expect_err("invalid");
        assert!(short(&e).contains("(60003 bytes)"), "{e}");
        for text in [
            format!("T_NO_STEER={long}\n"),
            format!("T_BOGUS{long}\n"),
            format!("T_{long}=1\n"),
        ] {
            let f = file(&text);
            short(&reparse::<Args>(&argv(&[]), &f.0, "T_CONFIG").expect_err("invalid"));
        }
        let f = file(&format!("T_CENTRAL={}\n", "x".repeat(70_000)));
        let e = reparse::<Args>(&argv(&[]), &f.0, "T_CONFIG").expect_err("too long");
        assert!(short(&e).ends_with("larger than 65536 bytes"), "{e}");
        // ...and on the command line (or in the environment), which has no such bound.
        let long = "x".repeat(5_000_000);
        let Err(Error::Arguments(e)) = parse_from::<Args>(
            &argv(&["--interval", &long]),
            |a| a.config.as_deref(),
            "T_CONFIG",
        ) else {
            panic!("a bad command line")
        };
        let text = short(&e.render());
        assert!(text.starts_with("error: invalid value 'xxx"), "{text}");
        assert!(
            text.contains("(5000002 bytes)") && text.contains("--interval"),
            "{text}"
        );
    }

    #[test]
    fn bad_files_name_the_line_and_key() {
        let cases = [
            (
                "T_CENTRAL=a\nT_BOGUS=1\n",
                "line 2: unknown key T_BOGUS (known: T_CENTRAL",
            ),
            ("T_CENTRAL\n", "line 1: expected KEY=VALUE"),
            (
                "T_CENTRAL=a\nT_CENTRAL=b\n",
                "line 2: T_CENTRAL is set twice",
            ),
            ("T_NO_STEER=maybe\n", "T_NO_STEER takes true or false"),
            ("T_CENTRAL=\"a\n", "unbalanced quotes"),
            ("T_CONFIG=/etc/x\n", "unknown key T_CONFIG"),
        ];
        for (text, expected) in cases {
            let f = file(text);
            let e = reparse::<Args>(&argv(&[]), &f.0, "T_CONFIG").expect_err(text);
            assert!(e.to_string().contains(expected), "{text:?}: {e}");
        }
        let f = file("T_INTERVAL=soon\n");
        let e = reparse::<Args>(&argv(&[]), &f.0, "T_CONFIG").expect_err("invalid");
        assert!(e.to_string().contains("soon"), "{e}");
        let e = reparse::<Args>(&argv(&[]), Path::new("/nonexistent/x.conf"), "T_CONFIG")
            .expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/x.conf"), "{e}");
    }
}
