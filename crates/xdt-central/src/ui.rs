//! The dashboard's files, embedded at build time from `ui/` by build.rs.

mod files {
    include!(concat!(env!("OUT_DIR"), "/ui_files.rs"));
}

/// (content type, bytes) of the embedded file at `path` (`/index.html`, `/app.js`, ...).
#[must_use]
pub fn file(path: &str) -> Option<(&'static str, &'static [u8])> {
    files::FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, content_type, bytes)| (*content_type, *bytes))
}

/// URL paths of every embedded file.
pub fn paths() -> impl Iterator<Item = &'static str> {
    files::FILES.iter().map(|(p, _, _)| *p)
}
