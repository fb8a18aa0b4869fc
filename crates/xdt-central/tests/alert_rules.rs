//! docs/observability/prometheus: `promtool check rules` accepts the alert rules and
//! `promtool test rules` passes their unit tests (every alert fires on what should make it
//! fire, and stays quiet on healthy series). The rules against a real Prometheus scraping a
//! real central: crates/xdt-system-tests/tests/steer.rs, `prometheus_evaluates_every_panel_and_alert`.

use std::{path::Path, process::Command};

fn promtool(args: &[&str]) -> Option<(bool, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/observability/prometheus");
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    let Some((ok, out)) = promtool(&["check", "rules", "xdt.rules.yml"]) else {
        xdt_testkit::skip_outside_ci(
            "the_alert_rules_are_valid_and_their_unit_tests_pass",
            "promtool is missing (apt-get install prometheus)",
        );
        return;
    };
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "xdt.rules.test.yml"]).expect("promtool");
    assert!(ok, "promtool test rules:\n{out}");
}
