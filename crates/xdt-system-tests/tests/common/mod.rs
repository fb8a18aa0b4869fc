//! The lab the root tests of `xdt` share: a client namespace and a node namespace joined by a
//! quiet veth pair, the `xdt` binary run in the node namespace, frames sent from the client.
#![allow(dead_code, reason = "each test file uses a part")]

pub mod frames;

use std::{
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdt_testkit::{
    frames::v6,
    lab::{self, Side},
};

pub const NODE4: [u8; 4] = [10, 88, 0, 5];
pub const CLIENT4: [u8; 4] = [10, 88, 0, 9];

pub fn node6() -> [u8; 16] {
    v6([0xfd00, 0x88, 0, 0, 0, 0, 0, 5])
}
pub fn client6() -> [u8; 16] {
    v6([0xfd00, 0x88, 0, 0, 0, 0, 0, 9])
}

/// A client namespace and a node namespace joined by a quiet veth pair (no addresses: only the
/// frames a test sends cross it).
pub struct Lab(lab::Lab);

impl std::ops::Deref for Lab {
    type Target = lab::Lab;
    fn deref(&self) -> &lab::Lab {
        &self.0
    }
}

impl Lab {
    pub fn new() -> Self {
        Self(lab::lab(
            Side::unique("xdtc", "xc"),
            Side::unique("xdtn", "xn"),
            1,
            "xdt-e2e-",
        ))
    }

    /// Runs `xdt ARGS` in the node namespace.
    pub fn xdt(&self, args: &[&str]) -> Output {
        self.node
            .command(xdt_testkit::process::xdt())
            .args(args)
            .output()
            .expect("run xdt")
    }

    /// Runs `xdt ARGS` and returns its stdout; panics with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.xdt(args);
        assert!(
            out.status.success(),
            "xdt {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `xdt ARGS`, expects failure, and returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.xdt(args);
        assert!(
            !out.status.success(),
            "xdt {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !stderr.contains("panicked"),
            "xdt {args:?} panicked: {stderr}"
        );
        stderr
    }

    pub fn file(&self, name: &str, text: &str) -> String {
        self.0
            .file(name, text)
            .expect("lab file")
            .display()
            .to_string()
    }

    pub fn attach(&self, mode: &str, rules: &str) -> Attached<'_> {
        let file = self.file("attach.rules", rules);
        let out = self.ok(&[
            "attach",
            "-i",
            &self.node_if,
            "--mode",
            mode,
            "--rules",
            &file,
            "--json",
        ]);
        let info: Value = serde_json::from_str(&out).expect("attach json");
        assert_eq!(info["mode"], mode);
        Attached {
            lab: self,
            program_id: info["program_id"].as_u64().expect("id") as u32,
        }
    }

    pub fn stats(&self) -> Value {
        serde_json::from_str(&self.ok(&["stats", "-i", &self.node_if, "--json"]))
            .expect("stats json")
    }

    /// Waits until total_packets reaches `total` (frames cross the veth asynchronously).
    pub fn wait_for_total(&self, total: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.stats();
            if stats["total_packets"].as_u64() >= Some(total) || Instant::now() > deadline {
                // Anything still in flight would show up now.
                std::thread::sleep(Duration::from_millis(200));
                return self.stats();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn send(&self, frames: &[(Vec<u8>, usize)]) {
        lab::send_frames(self, frames);
    }
}

/// Detaches on drop, so a failing test leaves no pins.
pub struct Attached<'a> {
    pub lab: &'a Lab,
    pub program_id: u32,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let _ = self.lab.xdt(&["detach", "-i", &self.lab.node_if]);
    }
}

pub fn program_exists(id: u32) -> bool {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.id() == id)
}

pub fn label(stats: &Value, name: &str) -> (u64, u64) {
    let labels = stats["labels"].as_array().expect("labels");
    let l = labels
        .iter()
        .find(|l| l["label"] == name)
        .unwrap_or_else(|| panic!("no label {name}: {stats}"));
    (
        l["packets"].as_u64().expect("packets"),
        l["bytes"].as_u64().expect("bytes"),
    )
}
