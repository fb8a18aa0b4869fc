//! `xdt rules check` on rules files an operator might get wrong: each is refused with the line
//! and what is wrong, and files that are not regular files are refused without being read.
//! Needs no root (no probe is involved).

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

const XDT: &str = env!("CARGO_BIN_EXE_xdt");

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir() -> Dir {
    let dir = std::env::temp_dir().join(xdt_testkit::unique_name("xdt-rules-files-"));
    std::fs::create_dir_all(&dir).expect("dir");
    Dir(dir)
}

/// `xdt rules check PATH`, which must end by itself within 10 s.
fn check(path: &std::path::Path) -> Output {
    let mut child = Command::new(XDT)
        .args(["rules", "check"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xdt");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("xdt rules check {} still ran after 10 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The error of a refused file.
fn refused(path: &std::path::Path) -> String {
    let out = check(path);
    assert!(
        !out.status.success(),
        "accepted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn mistakes_in_rules_files_are_refused_with_their_line() {
    let dir = dir();
    let file = |name: &str, text: &str| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let path = file("plus", "ok dst 10.1.0.0/16\nweb dst 10.0.0.0/+8\n");
    let e = refused(&path);
    assert!(
        e.contains(&format!("{}:2: bad CIDR \"10.0.0.0/+8\"", path.display())),
        "{e}"
    );
    let path = file("port", "web proto tcp dport +443\n");
    assert!(refused(&path).contains(":1: bad port \"+443\""));

    let path = file("nbsp", "ok dst 10.1.0.0/16\nweb\u{a0}dst 10.0.0.0/8\n");
    let e = refused(&path);
    assert!(
        e.contains(&format!("{}:2: '\\u{{a0}}' (U+00A0)", path.display())),
        "{e}"
    );

    let path = file(
        "twice",
        "web dst 10.0.0.0/8 proto tcp\ndns proto udp dport 53\nweb proto tcp dst 10.0.0.0/8\n",
    );
    let e = refused(&path);
    assert!(
        e.contains(&format!("{}:3: the same rule as line 1", path.display())),
        "{e}"
    );

    let long = format!("web dst 10.0.0.0/8 proto {}\n", "x".repeat(1_000_000));
    let e = refused(&file("long", &long));
    assert!(e.len() < 500, "{} bytes: {}", e.len(), &e[..500]);
}

#[test]
fn rules_files_must_be_regular_and_bounded() {
    let dir = dir();
    let fifo = dir.0.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let e = refused(&fifo);
    assert!(e.contains("a FIFO, not a regular file"), "{e}");
    let e = refused(std::path::Path::new("/dev/zero"));
    assert!(e.contains("a character device, not a regular file"), "{e}");
    let big = dir.0.join("big");
    std::fs::write(&big, "# comment\n".repeat(500_000)).expect("write");
    let e = refused(&big);
    assert!(e.contains("larger than 4194304 bytes"), "{e}");
}
