//! `xdt demo` end to end, as root: while it runs, central's /metrics.json shows the demo node's
//! labelled traffic and sampled events; after Ctrl-C, no namespace, pin or process is left.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use xdt_testkit::{process::free_port, root_or_skip};

fn metrics(port: u16) -> Option<Value> {
    serde_json::from_str(&xdt_testkit::http::get_ok(port, "/metrics.json")?).ok()
}

#[test]
fn demo_shows_telemetry_and_cleans_up() {
    if !root_or_skip("demo_shows_telemetry_and_cleans_up") {
        return;
    }
    let http = free_port();
    let mut demo = Command::new(xdt_testkit::process::xdt())
        .args(["demo", "--duration", "60"])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--telemetry-port", &free_port().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start xdt demo");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut seen = None;
    while Instant::now() < deadline {
        if let Some(v) = metrics(http)
            && let Some(node) = v["nodes"]
                .as_array()
                .and_then(|n| n.iter().find(|n| n["agent_id"] == "demo-node"))
        {
            let labels = node["label_counts"].as_array().cloned().unwrap_or_default();
            let web = labels
                .iter()
                .find(|l| l["label"] == "web")
                .and_then(|l| l["packets"].as_u64())
                .unwrap_or(0);
            let dns = labels
                .iter()
                .find(|l| l["label"] == "dns")
                .and_then(|l| l["packets"].as_u64())
                .unwrap_or(0);
            // Steered: HTTP paths and DNS names, read by the agent off its AF_XDP sockets.
            let events = node["recent_events"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let http = events.iter().any(|e| {
                e["inspection"]["http"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/echo/demo/"))
            });
            let dns_name = events
                .iter()
                .any(|e| e["inspection"]["dns"]["name"] == "example.com");
            if web > 20 && dns > 5 && http && dns_name && node["total_events"].as_u64() > Some(5) {
                seen = Some(node.clone());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The dashboard in headless Chromium against the live demo (ui/tests/dashboard.mjs).
    let dashboard = dashboard_check(Some(http));

    // Ctrl-C, as a user stops it (--duration is only the safety net).
    let pid = nix::unistd::Pid::from_raw(demo.id().cast_signed());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = demo.wait().expect("demo exits on Ctrl-C");
    let out = printed(&mut demo);
    assert!(
        seen.is_some(),
        "the dashboard never showed web, dns and steered HTTP and DNS events; demo said:\n{out}"
    );
    assert!(status.success(), "demo failed: {status}\n{out}");
    if let Some(result) = dashboard {
        eprintln!("dashboard check: {}", result.1.lines().last().unwrap_or(""));
        assert!(
            result.0,
            "the dashboard check failed against the demo:\n{}",
            result.1
        );
    }
    assert!(
        out.contains(&format!("dashboard   http://127.0.0.1:{http}/")),
        "{out}"
    );
    assert_cleaned_up(http, &out);
}

/// `--duration` ends the demo by itself, through the same cleanup as Ctrl-C: every process it
/// started is stopped, and no namespace, link or pin is left.
#[test]
fn demo_with_duration_stops_and_cleans_up_by_itself() {
    if !root_or_skip("demo_with_duration_stops_and_cleans_up_by_itself") {
        return;
    }
    let http = free_port();
    let started = Instant::now();
    let mut demo = Command::new(xdt_testkit::process::xdt())
        .args(["demo", "--duration", "8"])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--telemetry-port", &free_port().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start xdt demo");
    // Alive and serving before the end of its duration.
    let mut served = false;
    while started.elapsed() < Duration::from_secs(7) && !served {
        served = metrics(http).is_some();
        std::thread::sleep(Duration::from_millis(200));
    }
    let limit = Duration::from_mins(1);
    let status = loop {
        if let Some(status) = demo.try_wait().expect("wait for xdt demo") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = demo.kill();
            let _ = demo.wait();
            panic!("xdt demo --duration 8 still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    let out = printed(&mut demo);
    assert!(status.success(), "demo failed: {status}\n{out}");
    assert!(served, "central never answered during the demo:\n{out}");
    assert!(
        took >= Duration::from_secs(8),
        "the demo ended after {took:?}, before its 8 s:\n{out}"
    );
    for stopped in [
        "stopping the demo",
        "stopped xdt-agent",
        "stopped xdt-central",
    ] {
        assert!(out.contains(stopped), "no \"{stopped}\" in:\n{out}");
    }
    assert_cleaned_up(http, &out);
}

/// What the exited demo printed.
fn printed(demo: &mut std::process::Child) -> String {
    let mut out = String::new();
    demo.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    out
}

/// No namespace, pin or link of the demo is left, and central no longer answers.
fn assert_cleaned_up(http: u16, out: &str) {
    let namespaces = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip")
            .stdout,
    )
    .into_owned();
    assert!(
        !namespaces.contains("xdtdemo"),
        "namespaces left: {namespaces}\n{out}"
    );
    assert!(
        !std::path::Path::new("/sys/fs/bpf/xdt/xdtdemo-n").exists(),
        "pins left"
    );
    // Pins are kept per network namespace (the node's is gone now): none of any may be left.
    let pins_left: Vec<_> = std::fs::read_dir(xdt_datapath::paths::PIN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .map(|netns| netns.path().join("xdtdemo-n"))
        .filter(|pins| pins.exists())
        .collect();
    assert!(pins_left.is_empty(), "pins left: {pins_left:?}");
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("xdtdemo"),
        "links left: {}",
        String::from_utf8_lossy(&links.stdout)
    );
    assert!(
        metrics(http).is_none(),
        "central still answers after the demo"
    );
}

/// The dashboard against fleets the demo cannot make: ui/tests/dashboard.mjs serves ui/ with a
/// synthetic `/metrics.json` of 1, 20 and 50 agents (steering agents losing packets, flows with
/// their top-talkers card and a full flow state, disconnected agents, hostile labels) and checks
/// what Chromium shows of each.
#[test]
fn dashboard_shows_synthetic_fleets() {
    let Some((passed, out)) = dashboard_check(None) else {
        return;
    };
    eprintln!("dashboard check: {}", out.lines().last().unwrap_or(""));
    assert!(
        passed,
        "the dashboard check failed on synthetic fleets:\n{out}"
    );
}

/// Runs the dashboard's Chromium test against `http://127.0.0.1:PORT/`, or its synthetic fleets
/// without a port: (passed, output), or `None` when node, Chromium or the test's npm packages
/// are missing outside CI (in CI they must be there: `.ci/run` installs them).
fn dashboard_check(port: Option<u16>) -> Option<(bool, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("ui/tests/dashboard.mjs");
    let ready = root.join("ui/tests/node_modules/playwright-core").is_dir()
        && std::path::Path::new("/usr/bin/chromium").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        xdt_testkit::skip_outside_ci(
            "dashboard check",
            "needs node, /usr/bin/chromium and `npm ci --prefix ui/tests`",
        );
        return None;
    }
    let out = Command::new("node")
        .arg(&script)
        .args(port.map(|port| format!("http://127.0.0.1:{port}/")))
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}
