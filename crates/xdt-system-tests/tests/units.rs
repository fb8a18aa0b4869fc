//! The unit files of `systemd/` hold their hardening: `systemd-analyze security --offline=true`
//! scores each (as installed under a scratch root, the templates as instance `eth1`) at or
//! below its budget, and the daemons' capability and address-family needs stay as narrow as
//! docs/operations.md says.

use std::{path::Path, process::Command};

/// (unit as analysed, largest exposure allowed).
const BUDGETS: [(&str, f64); 4] = [
    ("xdt-agent@eth1.service", 2.5),
    ("xdt-attach@eth1.service", 2.5),
    ("xdt-central.service", 1.5),
    ("xdt-service-health.service", 1.5),
];

fn units_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../systemd")
}

#[test]
fn every_unit_stays_within_its_exposure_budget() {
    let root = std::env::temp_dir().join(format!("xdt-units-{}", std::process::id()));
    let system = root.join("etc/systemd/system");
    std::fs::create_dir_all(&system).expect("scratch root");
    for entry in std::fs::read_dir(units_dir()).expect("systemd/") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, system.join(path.file_name().expect("name"))).expect("copy unit");
    }
    let mut report = Vec::new();
    for (unit, budget) in BUDGETS {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("--root={}", root.display()))
            .arg(unit)
            .output()
            .expect("systemd-analyze (Debian's systemd package)");
        let text = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no exposure for {unit}: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        report.push(format!("{unit}: {exposure} (budget {budget})"));
        assert!(
            exposure <= budget,
            "{unit} exposure {exposure} > {budget}:\n{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    println!("{}", report.join("\n"));
}

#[test]
fn the_agent_unit_allows_exactly_what_setup_needs() {
    let agent = std::fs::read_to_string(units_dir().join("xdt-agent@.service")).expect("unit");
    let value = |key: &str| -> Vec<String> {
        agent
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    };
    assert_eq!(
        value("CapabilityBoundingSet"),
        ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_PERFMON"]
    );
    assert!(value("AmbientCapabilities").is_empty());
    let families = value("RestrictAddressFamilies");
    assert!(families.contains(&"AF_XDP".to_owned()), "{families:?}");
    assert_eq!(value("Type"), ["notify"]);
    assert!(!value("WatchdogSec").is_empty());
    assert_eq!(value("LoadCredential"), ["token:/etc/xdt/token"]);
    // bpf(2) is allowed to the agent and the attach unit only.
    for unit in ["xdt-central.service", "xdt-service-health.service"] {
        let text = std::fs::read_to_string(units_dir().join(unit)).expect("unit");
        assert!(!text.contains("AF_XDP") && !text.contains(" bpf"), "{unit}");
        assert!(
            text.contains("DynamicUser=yes") && text.contains("CapabilityBoundingSet=\n"),
            "{unit}"
        );
    }
}

/// The daemons' units load the token from one file and name that same file for the message a
/// missing token gets: systemd passes the placeholder (a newline) when the file does not exist,
/// and the daemon refuses it naming `XDT_TOKEN_SOURCE` (xdt_systemd::credential).
#[test]
fn the_units_name_the_token_file_they_load() {
    for unit in ["xdt-agent@.service", "xdt-central.service"] {
        let text = std::fs::read_to_string(units_dir().join(unit)).expect("unit");
        let values = |key: &str| -> Vec<&str> {
            text.lines()
                .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .collect()
        };
        assert_eq!(values("LoadCredential"), ["token:/etc/xdt/token"], "{unit}");
        assert_eq!(values("SetCredential"), ["token:\\n"], "{unit}");
        assert!(
            values("Environment").contains(&"XDT_TOKEN_SOURCE=/etc/xdt/token"),
            "{unit}"
        );
        // The refusal (exit status xdt_systemd::EXIT_CONFIG) is not retried.
        assert_eq!(values("RestartPreventExitStatus"), ["78"], "{unit}");
        assert!(
            values("AssertPathExists").is_empty(),
            "{unit}: it would refuse without a path"
        );
    }
}
