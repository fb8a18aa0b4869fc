//! Debian packages, installed so that what the machine's image happens to have preinstalled
//! cannot break the install, and so that a failure names the package and the command.

use std::{fmt::Write as _, process::Command};

use anyhow::{Result, bail};

use crate::cmd::{self, privileged};

/// Packages that must come from one source package at one version, and the one of each group
/// whose candidate version the others follow. Images of these machines ship qemu-utils 10 from
/// bookworm-backports without a backports source; bookworm's qemu-system-x86 7.2 then refuses to
/// install next to it ("qemu-utils : Breaks: qemu-system-common (< 1:8.0+dfsg-5~)"), so
/// qemu-utils is installed at qemu-system-x86's candidate version, downgrading it if need be.
const SAME_VERSION: &[(&str, &[&str])] = &[("qemu-system-x86", &["qemu-utils"])];

#[derive(Debug, Default)]
pub struct Apt {
    updated: bool,
}

/// The installed version of `package`, if dpkg has it fully installed.
fn installed_version(package: &str) -> Option<String> {
    let out = cmd::output(Command::new("dpkg-query").args([
        "-W",
        "-f=${db:Status-Status} ${Version}",
        package,
    ]))
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, version) = text.split_once(' ')?;
    (out.status.success() && status == "installed").then(|| version.to_owned())
}

/// The version apt would install of `package` ("Candidate:" of `apt-cache policy`).
fn candidate_version(package: &str) -> Option<String> {
    let out = cmd::output(Command::new("apt-cache").args(["policy", package])).ok()?;
    candidate_in(&String::from_utf8_lossy(&out.stdout))
}

fn candidate_in(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|line| line.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| v != "(none)")
}

/// True when the configured sources offer `package` at exactly `version`.
fn available(package: &str, version: &str) -> bool {
    cmd::output(Command::new("apt-cache").args(["madison", package]))
        .is_ok_and(|out| offers(&String::from_utf8_lossy(&out.stdout), version))
}

/// True when `apt-cache madison` printed a line for `version` (a source offers it; a version
/// that is only installed is not listed there).
fn offers(madison: &str, version: &str) -> bool {
    madison
        .lines()
        .any(|line| line.split('|').nth(1).is_some_and(|v| v.trim() == version))
}

fn apt_get() -> Command {
    let mut apt = privileged("apt-get");
    // Another apt (an unattended upgrade, a second shell) holds the lock for a while at most.
    apt.args(["-o", "DPkg::Lock::Timeout=300"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    apt
}

impl Apt {
    /// Installs those of `packages` that are not installed yet; `purpose` says what for.
    pub fn ensure(&mut self, purpose: &str, packages: &[&str]) -> Result<()> {
        if !cmd::succeeds("dpkg-query", &["--version"]) {
            bail!(
                "{purpose} needs these Debian packages and this is not a Debian system (no dpkg): {}",
                packages.join(" ")
            );
        }
        let missing: Vec<&str> = packages
            .iter()
            .copied()
            .filter(|p| installed_version(p).is_none())
            .collect();
        if missing.is_empty() {
            println!("{purpose}: installed ({})", packages.join(" "));
            return Ok(());
        }
        if !cmd::is_root() && !cmd::succeeds("sudo", &["--version"]) {
            bail!(
                "{purpose} needs {} installed: run as root, or install sudo",
                missing.join(" ")
            );
        }
        if !self.updated {
            cmd::run(apt_get().args(["update", "-q"]))?;
            self.updated = true;
        }
        let mut specs: Vec<String> = missing.iter().map(|p| (*p).to_owned()).collect();
        let mut downgrade = false;
        for (leader, followers) in SAME_VERSION {
            if !missing.contains(leader) {
                continue;
            }
            let Some(version) = candidate_version(leader) else {
                bail!("{purpose}: no source offers {leader} (`apt-cache policy {leader}`)");
            };
            for follower in *followers {
                let installed = installed_version(follower);
                if installed.as_deref() == Some(version.as_str()) {
                    continue;
                }
                if !available(follower, &version) {
                    bail!(
                        "{purpose}: {leader} {version} needs {follower} at the same version, which no source offers (`apt-cache madison {follower}`)"
                    );
                }
                if let Some(installed) = installed {
                    println!(
                        "{purpose}: {follower} {installed} is installed; {leader} {version} needs {follower} {version}, so it is replaced (--allow-downgrades)"
                    );
                    downgrade = true;
                }
                specs.retain(|s| s != follower);
                specs.push(format!("{follower}={version}"));
            }
        }
        let mut install = apt_get();
        install.args(["install", "-y", "-q"]);
        if downgrade {
            install.arg("--allow-downgrades");
        }
        install.args(&specs);
        if let Err(e) = cmd::run(&mut install) {
            bail!("{purpose}: {e}{}", Self::culprits(&specs));
        }
        Ok(())
    }

    /// After a failed install, which of `specs` cannot be installed on their own, and why
    /// (apt's error lines from a simulated install of each).
    fn culprits(specs: &[String]) -> String {
        let mut report = String::new();
        for spec in specs {
            let Ok(out) = cmd::output(Command::new("apt-get").args(["install", "-s", "-q", spec]))
            else {
                continue;
            };
            if out.status.success() {
                continue;
            }
            let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            let why: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("E:") || l.contains("Depends:") || l.contains("Breaks:"))
                .take(6)
                .collect();
            let _ = write!(
                report,
                "\n  package {spec} cannot be installed:\n    {}",
                why.join("\n    ")
            );
        }
        if report.is_empty() {
            report.push_str(
                "\n  (each package installs on its own when simulated; see apt's output above)",
            );
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::{candidate_in, offers};

    // Printed on a machine whose image ships qemu-utils 10 from bookworm-backports without a
    // backports source (2026-11-29).
    const POLICY_SYSTEM: &str = "qemu-system-x86:
  Installed: (none)
  Candidate: 1:7.2+dfsg-7+deb12u18+b3
  Version table:
     1:7.2+dfsg-7+deb12u18+b3 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
";
    const POLICY_UTILS: &str = "qemu-utils:
  Installed: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Candidate: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Version table:
 *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100
        100 /var/lib/dpkg/status
     1:7.2+dfsg-7+deb12u18+b3 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
";
    const MADISON_UTILS: &str = "\
qemu-utils | 1:7.2+dfsg-7+deb12u18+b3 | http://deb.debian.org/debian bookworm/main amd64 Packages
qemu-utils | 1:7.2+dfsg-7+deb12u15 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
";

    #[test]
    fn the_suites_qemu_utils_is_found_next_to_the_images_newer_one() {
        let leader = candidate_in(POLICY_SYSTEM).expect("a candidate");
        assert_eq!(leader, "1:7.2+dfsg-7+deb12u18+b3");
        // apt's own candidate for qemu-utils is the installed backport, which is why it is not
        // asked: the leader's version is, and the sources offer it.
        assert_eq!(
            candidate_in(POLICY_UTILS).as_deref(),
            Some("1:10.0.2+ds-2+deb13u1~bpo12+1")
        );
        assert!(offers(MADISON_UTILS, &leader));
        assert!(!offers(MADISON_UTILS, "1:10.0.2+ds-2+deb13u1~bpo12+1"));
    }

    #[test]
    fn no_candidate_is_none() {
        assert_eq!(
            candidate_in("foo:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        assert_eq!(candidate_in(""), None);
    }
}
