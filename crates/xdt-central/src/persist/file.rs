//! `state.json` in `--state-dir`: written whole to a temporary file, synced and renamed over the
//! old one, so a crash leaves either the old or the new file, never a torn one.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use super::Persisted;
use crate::error::{Error, Result};

pub const FILE_NAME: &str = "state.json";

#[must_use]
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The saved state, `None` if there is none yet.
pub fn load(dir: &Path) -> Result<Option<Persisted>> {
    let path = path(dir);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::LoadState {
                path,
                source: e.into(),
            });
        }
    };
    let persisted: Persisted = serde_json::from_slice(&text).map_err(|e| Error::LoadState {
        path: path.clone(),
        source: e.into(),
    })?;
    if persisted.version != Persisted::VERSION {
        return Err(Error::LoadState {
            path,
            source: format!(
                "format version {} (this central reads {})",
                persisted.version,
                Persisted::VERSION
            )
            .into(),
        });
    }
    Ok(Some(persisted))
}

/// Replaces `state.json` atomically with `bytes`.
pub fn write(dir: &Path, bytes: &[u8]) -> Result<()> {
    let path = path(dir);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    write_and_rename(dir, &tmp, &path, bytes).map_err(|source| Error::SaveState { path, source })
}

/// A snapshot is written and synced this much at a time: the file system commits one sync at
/// a time, so the journal's syncs (each one an Ack waiting) wait for one chunk at most, not
/// for megabytes of snapshot.
const SYNC_CHUNK: usize = 256 * 1024;

fn write_and_rename(dir: &Path, tmp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut file = File::create(tmp)?;
    for chunk in bytes.chunks(SYNC_CHUNK) {
        file.write_all(chunk)?;
        file.sync_data()?;
    }
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)?;
    // The rename itself is durable once the directory is synced.
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{persist::persisted, state::State};

    #[test]
    fn save_then_load_and_bad_files() {
        let dir = std::env::temp_dir().join(format!("xdt-central-persist-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert!(load(&dir).expect("no file yet").is_none());

        let state = State::new(10, 4);
        let bytes = serde_json::to_vec(&persisted(&state)).expect("json");
        write(&dir, &bytes).expect("save");
        write(&dir, &bytes).expect("save over");
        let loaded = load(&dir).expect("load").expect("some");
        assert_eq!(loaded.version, Persisted::VERSION);
        assert!(!dir.join(".state.json.tmp").exists());

        fs::write(path(&dir), b"{\"version\":1,").expect("write");
        let err = load(&dir).expect_err("torn");
        assert!(err.to_string().contains("state.json"), "{err}");
        fs::write(path(&dir), b"{\"version\":99,\"agents\":[]}").expect("write");
        let err = load(&dir).expect_err("version");
        assert!(format!("{err:?}").contains("format version 99"), "{err:?}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
