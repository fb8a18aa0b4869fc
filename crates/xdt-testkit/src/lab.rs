//! The lab of [`xdt_lab`] as root tests and benchmarks use it: built or panicking, processes
//! killed at once on drop, the probe attached with the `xdt` binary and detached on drop, and
//! central started in the node namespace.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

pub use xdt_lab::{Lab, LabSpec, Side};

use crate::process::{free_port, sibling};

/// A lab of `client` and `node` over a veth pair with `queues` queues; panics if it cannot be
/// built. Its processes get SIGKILL on drop: tests do not wait for graceful exits.
#[must_use]
pub fn lab(client: Side, node: Side, queues: u32, dir_prefix: &str) -> Lab {
    Lab::new(&LabSpec {
        client,
        node,
        queues,
        dir_prefix: dir_prefix.to_owned(),
        grace: Duration::ZERO,
        report: false,
    })
    .unwrap_or_else(|e| panic!("lab: {e}"))
}

/// `xdt ARGS` in the node namespace, as a command to run.
#[must_use]
pub fn xdt(lab: &Lab, args: &[&str]) -> Command {
    let mut c = lab.node.command(sibling("xdt"));
    c.args(args);
    c
}

/// Attaches the probe to the node's interface with `rules` in `mode` (`xdt attach --json`) and
/// detaches it when the lab is dropped; the attach report.
pub fn attach(lab: &mut Lab, mode: &str, rules: &str) -> serde_json::Value {
    let file = lab.file("attach.rules", rules).expect("rules file");
    let out = xdt(
        lab,
        &[
            "attach",
            "-i",
            &lab.node_if,
            "--mode",
            mode,
            "--json",
            "--rules",
        ],
    )
    .arg(&file)
    .output()
    .expect("xdt attach");
    assert!(
        out.status.success(),
        "xdt attach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.on_drop(|lab| {
        xdt(lab, &["detach", "-i", &lab.node_if]).output()?;
        Ok(format!("detached the probe from {}", lab.node_if))
    });
    serde_json::from_slice(&out.stdout).expect("attach json")
}

/// Central as the lab runs it: in the node namespace on loopback, with a token.
#[derive(Debug, Clone)]
pub struct Central {
    pub pid: u32,
    pub http: u16,
    pub telemetry: u16,
    pub token: PathBuf,
}

impl Central {
    /// The body of a `200 OK` answer to `GET path` from this central.
    #[must_use]
    pub fn get(&self, lab: &Lab, path: &str) -> Option<String> {
        get(lab, self.http, path)
    }

    /// The node of agent `agent_id` in this central's /metrics.json once `pick` holds (panics
    /// with `what` after 20 s).
    pub fn node_when(
        &self,
        lab: &Lab,
        agent_id: &str,
        what: &str,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        crate::http::central_node_when(
            || self.get(lab, "/metrics.json"),
            agent_id,
            what,
            Duration::from_secs(20),
            pick,
        )
    }

    /// `--central` and `--token-file` for an agent in the node namespace.
    #[must_use]
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--central".to_owned(),
            format!("127.0.0.1:{}", self.telemetry),
            "--token-file".to_owned(),
            self.token.display().to_string(),
        ]
    }
}

/// Starts xdt-central in the node namespace with `extra` options and waits (15 s at most) until
/// its `/healthz` answers.
pub fn start_central(lab: &mut Lab, extra: &[&str]) -> Central {
    let token = lab.file("token", "lab-token\n").expect("token");
    let (http, telemetry) = (free_port(), free_port());
    let mut command = lab.node.command(sibling("xdt-central"));
    command
        .args(["--telemetry-listen", &format!("127.0.0.1:{telemetry}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .arg("--token-file")
        .arg(&token)
        .args(extra);
    let pid = lab
        .processes
        .spawn("xdt-central", &mut command)
        .expect("start xdt-central");
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(lab, http, "/healthz").is_none() {
        assert!(
            Instant::now() < deadline,
            "central did not come up: {}",
            lab.processes.log("xdt-central")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Central {
        pid,
        http,
        telemetry,
        token,
    }
}

/// The body of a `200 OK` answer to `GET path` on the node's 127.0.0.1:`port`.
#[must_use]
pub fn get(lab: &Lab, port: u16, path: &str) -> Option<String> {
    lab.node
        .enter(|| crate::http::get_ok(port, path))
        .expect("enter the node namespace")
}

/// `xdt stats --json` of the node's interface.
#[must_use]
pub fn stats(lab: &Lab) -> serde_json::Value {
    let out = xdt(lab, &["stats", "-i", &lab.node_if, "--json"])
        .output()
        .expect("xdt stats");
    assert!(
        out.status.success(),
        "xdt stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats json")
}

/// Sends each `(frame, count)` from the client's end, whole frames through AF_PACKET, from a
/// thread on CPU 0 (so the veth delivers, and the probe sees, every frame on one CPU).
pub fn send_frames(lab: &Lab, frames: &[(Vec<u8>, usize)]) {
    let iface = lab.client_if.as_str();
    lab.client
        .enter(|| {
            crate::net::FrameSender::pin_to_cpu(0);
            let sender = crate::net::FrameSender::open(iface);
            for (frame, count) in frames {
                for _ in 0..*count {
                    sender.send(frame);
                }
            }
        })
        .expect("client namespace");
}
