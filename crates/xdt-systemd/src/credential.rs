//! Credentials: where a secret file is, from its flag or systemd's `LoadCredential=`, and the
//! unit's placeholder for a missing file refused with the file's name and what to do.

use crate::input;

/// The file of the credential `name`: `explicit` (its flag) if given, else
/// `$CREDENTIALS_DIRECTORY/NAME` (systemd's `LoadCredential=NAME:...`).
///
/// xdt's units pair `LoadCredential=NAME:FILE` with a placeholder, `SetCredential=NAME:\n`,
/// which systemd passes instead when FILE does not exist (systemd.exec(5)): the daemon then starts
/// and refuses here, naming FILE from `$XDT_NAME_SOURCE` (`Environment=XDT_TOKEN_SOURCE=FILE`)
/// and saying what to do. `LoadCredential=` alone fails with 243/CREDENTIALS before anything
/// runs, and systemd 252 does not say which file it missed.
pub fn credential(
    explicit: Option<&std::path::Path>,
    name: &str,
    flag: &str,
) -> Result<std::path::PathBuf, CredentialError> {
    credential_from(
        explicit,
        name,
        flag,
        std::env::var_os("CREDENTIALS_DIRECTORY").as_deref(),
        std::env::var_os(source_variable(name)).as_deref(),
    )
}

/// Why there is no credential to read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// Neither the flag nor systemd's credentials directory: run by hand without the flag.
    #[error("no {name}: pass {flag} or a systemd credential named {name}")]
    NotGiven { name: String, flag: String },
    /// systemd passed the unit's placeholder: the file the unit loads is missing or empty. The
    /// message names it and says what to do.
    #[error("{0}")]
    Missing(String),
}

impl CredentialError {
    /// What a daemon exits with: [`EXIT_CONFIG`] for a missing file, which the units do not
    /// restart on (`RestartPreventExitStatus=`): nothing changes until the operator writes it.
    #[must_use]
    pub fn exit_status(&self) -> i32 {
        match self {
            Self::NotGiven { .. } => 1,
            Self::Missing(_) => EXIT_CONFIG,
        }
    }
}

/// Exit status of a daemon refusing its configuration in a way a restart cannot mend
/// (`EX_CONFIG` of sysexits.h; systemd.exec(5) lists it as `CONFIG`).
pub const EXIT_CONFIG: i32 = 78;

/// The environment variable that names the file the credential `name` is loaded from.
fn source_variable(name: &str) -> String {
    format!("XDT_{}_SOURCE", name.to_ascii_uppercase().replace('-', "_"))
}

/// [`credential`] with the environment given: `directory` is `$CREDENTIALS_DIRECTORY`, `source`
/// the credential's `$XDT_NAME_SOURCE`.
fn credential_from(
    explicit: Option<&std::path::Path>,
    name: &str,
    flag: &str,
    directory: Option<&std::ffi::OsStr>,
    source: Option<&std::ffi::OsStr>,
) -> Result<std::path::PathBuf, CredentialError> {
    use std::io::Read as _;
    let directory = match (explicit, directory) {
        (Some(path), _) => return Ok(path.to_owned()),
        (None, Some(directory)) => std::path::Path::new(directory),
        (None, None) => {
            return Err(CredentialError::NotGiven {
                name: name.to_owned(),
                flag: flag.to_owned(),
            });
        }
    };
    let path = directory.join(name);
    let Ok(file) = std::fs::File::open(&path) else {
        // Missing or unreadable: the daemon's own read of the file says which and why.
        return Ok(path);
    };
    // The placeholder, or a source holding only whitespace: no token either way. Anything else
    // (a token, an unreadable or oversized file) is for the daemon's own checks.
    let mut content = Vec::new();
    if file
        .take(input::MAX_TOKEN_BYTES)
        .read_to_end(&mut content)
        .is_err()
        || !content.trim_ascii().is_empty()
    {
        return Ok(path);
    }
    let variable = source_variable(name);
    let Some(source) = source.filter(|s| !s.is_empty()) else {
        return Err(CredentialError::Missing(format!(
            "no {name}: the systemd credential {name} ({}) is empty: the file the unit's \
             LoadCredential={name}:FILE names is missing or empty (set {variable}=FILE in the \
             unit for this message to name it)",
            path.display()
        )));
    };
    let source = std::path::Path::new(source);
    let shown = source.display();
    let what = match std::fs::metadata(source) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
        Ok(meta) if meta.len() == 0 => "is empty",
        Ok(_) => "holds no token (only whitespace)",
        Err(_) => "is missing or empty",
    };
    Err(CredentialError::Missing(format!(
        "no {name}: {shown} {what}. Write the token that central and its agents share into it \
         (readable by root only: install -m 0600 /dev/stdin {shown} <<<'TOKEN'), then start the \
         unit again. The unit loads it as the systemd credential {name} (LoadCredential=); a \
         drop-in that loads it from elsewhere sets {variable} to the same file"
    )))
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsStr, path::Path};

    use super::{EXIT_CONFIG, credential_from};

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("xdt-credential-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch directory");
            Self(dir)
        }

        fn write(&self, name: &str, content: &str) -> std::path::PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).expect("write");
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn token(directory: &Path, source: Option<&Path>) -> Result<std::path::PathBuf, String> {
        credential_from(
            None,
            "token",
            "--token-file",
            Some(directory.as_os_str()),
            source.map(Path::as_os_str),
        )
        .map_err(|e| {
            assert_eq!(
                e.exit_status(),
                EXIT_CONFIG,
                "{e}: a restart does not mend it"
            );
            e.to_string()
        })
    }

    #[test]
    fn a_loaded_credential_is_its_file() {
        let dir = Scratch::new("loaded");
        let file = dir.write("token", "s3cret\n");
        assert_eq!(token(&dir.0, Some(Path::new("/etc/xdt/token"))), Ok(file));
    }

    #[test]
    fn the_flag_wins_and_nothing_is_an_error_that_names_both_ways() {
        let flag = Path::new("/elsewhere/token");
        assert_eq!(
            credential_from(
                Some(flag),
                "token",
                "--token-file",
                Some(OsStr::new("/x")),
                None
            ),
            Ok(flag.to_owned())
        );
        let error = credential_from(None, "token", "--token-file (XDT_TOKEN_FILE)", None, None)
            .expect_err("nothing given");
        assert_eq!(
            error.to_string(),
            "no token: pass --token-file (XDT_TOKEN_FILE) or a systemd credential named token"
        );
        assert_eq!(error.exit_status(), 1);
    }

    #[test]
    fn the_placeholder_names_the_missing_source_and_what_to_do() {
        let dir = Scratch::new("missing");
        dir.write("token", "\n");
        let source = dir.0.join("etc-xdt-token");
        let error = token(&dir.0, Some(&source)).expect_err("the placeholder is refused");
        let shown = source.display();
        assert!(
            error.starts_with(&format!("no token: {shown} does not exist. ")),
            "{error}"
        );
        assert!(
            error.contains(&format!("install -m 0600 /dev/stdin {shown}")),
            "{error}"
        );
        assert!(error.contains("XDT_TOKEN_SOURCE"), "{error}");
    }

    #[test]
    fn an_empty_source_is_told_from_a_missing_one() {
        let dir = Scratch::new("empty");
        dir.write("token", "\n");
        let source = dir.write("source", "");
        let error = token(&dir.0, Some(&source)).expect_err("refused");
        assert!(
            error.starts_with(&format!("no token: {} is empty.", source.display())),
            "{error}"
        );
        let blank = dir.write("blank", " \n\t\n");
        let error = token(&dir.0, Some(&blank)).expect_err("refused");
        assert!(
            error.contains("holds no token (only whitespace)"),
            "{error}"
        );
    }

    #[test]
    fn without_the_source_variable_the_message_says_how_to_get_it() {
        let dir = Scratch::new("unnamed");
        dir.write("token", "  \n");
        let error = token(&dir.0, None).expect_err("refused");
        assert!(error.contains("LoadCredential=token:FILE"), "{error}");
        assert!(error.contains("set XDT_TOKEN_SOURCE=FILE"), "{error}");
    }

    #[test]
    fn a_credential_systemd_did_not_pass_is_left_to_the_reader() {
        // No file at all: the daemon's read names $CREDENTIALS_DIRECTORY/token and the error.
        let dir = Scratch::new("absent");
        assert_eq!(
            token(&dir.0, Some(Path::new("/etc/xdt/token"))),
            Ok(dir.0.join("token"))
        );
    }
}
