//! The one rule for tests that cannot run here (no root, a missing tool): skipped with a line
//! that says why outside CI, a failure in CI, where it is a fault of the set-up.

/// True when the root-only test may run. Outside root it prints why it is skipped; in CI
/// (`CI` set) a root-only test that cannot run is a failure of the CI setup, so it panics.
#[must_use]
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip_outside_ci(
        test,
        "needs root (CAP_BPF, CAP_NET_ADMIN, network namespaces); run the tests as root",
    );
    false
}

/// A test that cannot run for `reason` (no root, a missing tool): outside CI it says so and the
/// caller returns; in CI (`CI` set) that is a failure of the CI setup, so it panics.
pub fn skip_outside_ci(test: &str, reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {reason}; CI must provide it"
    );
    say(&format!("{test}: skipped: {reason}"));
}

/// Prints `line` straight to file descriptor 2, past the test harness's output capture, so a
/// skip is seen also when the test passes.
pub fn say(line: &str) {
    let _ = nix::unistd::write(std::io::stderr(), format!("{line}\n").as_bytes());
}
