//! What can be checked of the Nix side without nixpkgs (docs/nixos.md): every `.nix` file
//! parses (Debian's nix-bin), is formatted as `nix fmt` formats it (nixpkgs-fmt), and the
//! services.xdt module and the flake's outputs evaluate to what their cases expect
//! (nixos-modules/tests/eval.nix) against nixpkgs' lib, from the checkout named by
//! `XDT_NIXPKGS_LIB`, and stand-ins for the rest of nixpkgs. The evaluation is read-only: a
//! derivation needed during evaluation (import from derivation) cannot be built, so it fails.
//!
//! Missing tools fail the test in CI (`.ci/run` installs them) and skip it elsewhere. Without
//! `XDT_NIXPKGS_LIB` the module test says it was skipped: nixpkgs' lib is not in a registry
//! these machines reach (`.ci/run` sets it when a copy is on the machine).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.nix` file of the repository, outside build output and dependencies.
fn nix_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !matches!(name, "target" | ".git" | "node_modules") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "nix") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo(), &mut files);
    files
}

/// True when `tool` can run; otherwise skips (fails in CI) with what to install.
fn have(tool: &str, install: &str, test: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok() {
        return true;
    }
    xdt_testkit::skip_outside_ci(test, &format!("{tool} is missing ({install})"));
    false
}

#[test]
fn every_nix_file_parses() {
    if !have(
        "nix-instantiate",
        "apt-get install nix-bin",
        "every_nix_file_parses",
    ) {
        return;
    }
    let files = nix_files();
    // flake.nix, the module, its evaluation cases, the NixOS VM test at least.
    assert!(files.len() >= 4, "too few .nix files found: {files:?}");
    for file in &files {
        let out = Command::new("nix-instantiate")
            .arg("--parse")
            .arg(file)
            .output()
            .expect("run nix-instantiate");
        assert!(
            out.status.success(),
            "{} does not parse:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    xdt_testkit::say(&format!("{} .nix files parse", files.len()));
}

#[test]
fn nix_files_are_formatted() {
    if !have(
        "nixpkgs-fmt",
        "cargo install nixpkgs-fmt@1.3.0 --locked",
        "nix_files_are_formatted",
    ) {
        return;
    }
    let files = nix_files();
    let out = Command::new("nixpkgs-fmt")
        .arg("--check")
        .args(&files)
        .output()
        .expect("run nixpkgs-fmt");
    assert!(
        out.status.success(),
        "not formatted (run `nix fmt` or `nixpkgs-fmt .`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_module_evaluates() {
    let Some(lib) = std::env::var_os("XDT_NIXPKGS_LIB") else {
        xdt_testkit::say(
            "the_module_evaluates: skipped: XDT_NIXPKGS_LIB is not set (a checkout of nixpkgs' \
             lib, e.g. the nix-community/nixpkgs.lib repository, with lib/ in it)",
        );
        return;
    };
    let lib = PathBuf::from(lib).join("lib");
    assert!(
        lib.join("default.nix").is_file(),
        "XDT_NIXPKGS_LIB: no lib/default.nix in {}",
        lib.display()
    );
    assert!(
        have(
            "nix-instantiate",
            "apt-get install nix-bin",
            "the_module_evaluates"
        ),
        "XDT_NIXPKGS_LIB is set but nix-instantiate is missing"
    );
    let out = Command::new("nix-instantiate")
        .args(["--readonly-mode", "--eval", "--strict", "--json"])
        .arg(repo().join("nixos-modules/tests/eval.nix"))
        .args(["--arg", "lib"])
        .arg(format!("import {}", lib.display()))
        .output()
        .expect("run nix-instantiate");
    assert!(
        out.status.success(),
        "the module's evaluation failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("eval.nix returns JSON");
    let failures = result["failures"].as_array().expect("failures: a list");
    let checks = result["checks"].as_u64().expect("checks: a number");
    assert!(
        failures.is_empty(),
        "{} of {checks} module checks failed:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|f| f.as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The cases must all have run (eval.nix counts them): not an empty list passing.
    assert!(checks >= 89, "only {checks} module checks ran");
    xdt_testkit::say(&format!("the_module_evaluates: {checks} checks passed"));
}
