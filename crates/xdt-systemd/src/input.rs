//! The files an operator hands xdt (config files, the token, rules files) and the values in
//! them, bounded: [`read_text`] reads only regular files, up to a size, so `/dev/zero` or a
//! FIFO named by mistake is an error instead of an out-of-memory kill or a hang; [`clip`]
//! shortens a value echoed in an error, so a 5 MB bad value makes a one-line message.

use std::{
    borrow::Cow,
    fs::OpenOptions,
    io::{self, Read as _},
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
};

/// Longest config file (`KEY=VALUE` lines).
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// Longest token file.
pub const MAX_TOKEN_BYTES: u64 = 4 * 1024;
/// Longest value shown in an error message, in characters.
pub const SHOWN_CHARS: usize = 64;

/// The content of the regular file at `path`, refused (with the reason in the error) when it
/// is something else (a FIFO, a device, a directory, a socket), longer than `max` bytes, or
/// not UTF-8. Opening does not wait for a FIFO's writer.
pub fn read_text(path: &Path, max: u64) -> io::Result<String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not a regular file"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {max} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// `value` for an error message: whole if short, else its first [`SHOWN_CHARS`] characters and
/// how long it was.
#[must_use]
pub fn clip(value: &str) -> Cow<'_, str> {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => Cow::Borrowed(value),
        Some((end, _)) => Cow::Owned(format!("{}... ({} bytes)", &value[..end], value.len())),
    }
}

/// `text` with every word longer than [`SHOWN_CHARS`] clipped: for messages made elsewhere
/// (clap's) that quote a value whole.
#[must_use]
pub fn clip_words(text: &str) -> Cow<'_, str> {
    if text
        .split(' ')
        .all(|w| w.chars().nth(SHOWN_CHARS).is_none())
    {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.split(' ').map(clip).collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("xdt-input-{}-{name}", std::process::id()))
    }

    #[test]
    fn only_regular_files_up_to_the_bound() {
        let path = temp("ok");
        std::fs::write(&path, "A=1\n").expect("write");
        assert_eq!(read_text(&path, 4).expect("read"), "A=1\n");
        let e = read_text(&path, 3).expect_err("too long");
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(e.to_string(), "larger than 3 bytes");
        std::fs::write(&path, [b'A', 0xff]).expect("write");
        assert!(
            read_text(&path, 10)
                .expect_err("binary")
                .to_string()
                .contains("not UTF-8")
        );
        let _ = std::fs::remove_file(&path);

        let e = read_text(Path::new("/dev/zero"), MAX_CONFIG_BYTES).expect_err("device");
        assert_eq!(e.to_string(), "a character device, not a regular file");
        let e = read_text(Path::new("/"), MAX_CONFIG_BYTES).expect_err("directory");
        assert_eq!(e.to_string(), "a directory, not a regular file");

        // A FIFO nobody writes to: refused at once, not waited on.
        let fifo = temp("fifo");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        let e = read_text(&fifo, MAX_CONFIG_BYTES).expect_err("fifo");
        assert_eq!(e.to_string(), "a FIFO, not a regular file");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let _ = std::fs::remove_file(&fifo);
    }

    #[test]
    fn long_values_are_clipped() {
        assert_eq!(clip("short"), "short");
        let long = "x".repeat(5_000_000);
        let shown = clip(&long);
        assert_eq!(
            shown,
            format!("{}... (5000000 bytes)", "x".repeat(SHOWN_CHARS))
        );
        let accents = "é".repeat(100);
        assert_eq!(
            clip(&accents),
            format!("{}... (200 bytes)", "é".repeat(SHOWN_CHARS))
        );
        let message = format!("invalid value '{long}' for '--interval <SECONDS>'");
        let clipped = clip_words(&message);
        assert!(clipped.len() < 200, "{clipped}");
        assert!(clipped.ends_with("for '--interval <SECONDS>'"));
        assert_eq!(clip_words("a b c"), "a b c");
    }
}
