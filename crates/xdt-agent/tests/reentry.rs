//! The re-entry pair where /proc/sys is read-only, as in every unprivileged container: as root,
//! in a network namespace of its own and a mount namespace (private, so nothing reaches the
//! host's mounts) with /proc/sys bound read-only over itself. The pair must come up with
//! rp_filter 0 on its host end and no IPv6 address on its agent end, though the namespace's
//! defaults say otherwise, and go away when removed.

use std::process::Command;

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};
use xdt_agent::steer::reentry::{ReentryPair, names};
use xdt_testkit::{net::Netns, root_or_skip};

/// Any index: the pair is named after it and nothing else looks it up.
const MONITORED: u32 = 4242;

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_owned()
}

#[test]
fn the_pair_is_set_up_over_netlink_with_proc_sys_read_only() {
    if !root_or_skip("the_pair_is_set_up_over_netlink_with_proc_sys_read_only") {
        return;
    }
    let ns = Netns::new("xren");
    // What a fresh interface gets unless told otherwise: strict reverse-path filtering.
    ns.sysctl("net.ipv4.conf.default.rp_filter", "1");
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
    let (agent_end, host_end) = names(MONITORED);
    let (host_filter, agent_gen_mode, agent_addresses) = ns.enter(|| {
        // This thread only: its own mount namespace, nothing propagated back.
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private");
        mount(
            Some("/proc/sys"),
            "/proc/sys",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind /proc/sys");
        mount(
            None::<&str>,
            "/proc/sys",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .expect("/proc/sys read-only");
        let probe = "/proc/sys/net/ipv4/conf/lo/rp_filter";
        let refused = std::fs::write(probe, "0").expect_err("/proc/sys is read-only");
        assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let pair = runtime
            .block_on(ReentryPair::create(MONITORED, 1500))
            .expect("the re-entry pair, /proc/sys read-only");
        let host_filter = read(&format!("/proc/sys/net/ipv4/conf/{host_end}/rp_filter"));
        let gen_mode = read(&format!(
            "/proc/sys/net/ipv6/conf/{agent_end}/addr_gen_mode"
        ));
        // Link-local addresses come with the link going up; give it a moment to show one.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let addresses = Command::new("ip")
            .args(["-6", "-o", "addr", "show", "dev", &agent_end])
            .output()
            .expect("ip addr");
        runtime.block_on(pair.remove()).expect("removing the pair");
        (
            host_filter,
            gen_mode,
            String::from_utf8_lossy(&addresses.stdout).into_owned(),
        )
    });
    assert_eq!(host_filter, "0", "rp_filter on {host_end}");
    assert_eq!(
        agent_gen_mode, "1",
        "addr_gen_mode on {agent_end} (1: none)"
    );
    assert_eq!(agent_addresses, "", "IPv6 addresses on {agent_end}");
    let links = ns.ip(&["-o", "link"]);
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(&agent_end),
        "the pair outlived remove: {links}"
    );
}
