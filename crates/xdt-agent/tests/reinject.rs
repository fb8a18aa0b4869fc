//! The agent's re-injection socket ([`TxPort`]) on a real veth pair, as root: what the kernel
//! takes, transmits or drops must add up to what the agent queued, frame for frame.

use std::time::{Duration, Instant};

use xdt_agent::steer::{BindMode, xsk::TxPort};
use xdt_testkit::{
    net::{Netns, veth},
    root_or_skip,
};

/// A veth pair in a fresh namespace: the agent's end `a`, the host end `b` with `mtu`, both up,
/// without IPv6 (nothing but test frames crosses).
fn pair(mtu: u32) -> (Netns, String, String) {
    let ns = Netns::new("xrj");
    let (a, b) = (
        xdt_testkit::unique_name("ra"),
        xdt_testkit::unique_name("rb"),
    );
    veth(&ns, &a, &ns, &b, 1);
    for dev in [&a, &b] {
        ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "1");
    }
    ns.ip(&["link", "set", &b, "mtu", &mtu.to_string()]);
    for dev in [&a, &b] {
        ns.ip(&["link", "set", dev, "arp", "off", "up"]);
    }
    (ns, a, b)
}

/// A broadcast frame of `len` bytes of a local experimental ethertype: the host end counts it
/// and no protocol answers it.
fn frame(len: usize, i: u32) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
    f.extend_from_slice(&i.to_be_bytes());
    f.resize(len, 0);
    f
}

/// Flushes until the kernel has completed everything (at most 5 s).
fn drain(tx: &mut TxPort) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rejected = 0;
    while tx.in_flight() > 0 && Instant::now() < deadline {
        rejected += tx.flush();
        std::thread::sleep(Duration::from_millis(1));
    }
    rejected
}

/// `ip -s` receive packets of `dev` (a veth counts what its peer delivered to it).
fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    let out = ns.ip(&["-s", "-j", "link", "show", dev]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    json[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets")
}

/// Three times round the TX ring (1,024 entries at 2,048 frames), three frames per flush: no
/// frame may be refused while the ring has room. The TX ring's reservation came back short
/// whenever xdpilone's cached view of the kernel's consumer ran out, and the rest of the
/// flush was dropped as if the ring were full.
#[test]
fn the_tx_ring_refuses_nothing_it_has_room_for() {
    if !root_or_skip("the_tx_ring_refuses_nothing_it_has_room_for") {
        return;
    }
    let (ns, a, b) = pair(1500);
    let (queued, rejected, transmitted, dropped, in_flight) = ns.enter(|| {
        let mut tx = TxPort::open(&a, 2048, BindMode::Copy).expect("TX socket");
        let (mut queued, mut rejected) = (0u64, 0usize);
        for round in 0..1100u32 {
            for i in 0..3 {
                assert!(tx.queue(&frame(60, round * 3 + i), None), "no free frame");
                queued += 1;
            }
            rejected += tx.flush();
        }
        rejected += drain(&mut tx);
        (
            queued,
            rejected,
            tx.transmitted(),
            tx.dropped(),
            tx.in_flight(),
        )
    });
    assert_eq!(rejected, 0, "frames refused with room on the ring");
    assert_eq!((transmitted, dropped, in_flight), (queued, 0, 0));
    assert_eq!(rx_packets(&ns, &b), queued);
}

/// Frames the host end cannot take (over its MTU): in copy mode the kernel completes each as
/// if it had gone out and `sendto` says EBUSY. They are dropped, not transmitted.
#[test]
fn frames_the_host_end_cannot_take_are_counted_as_dropped() {
    if !root_or_skip("frames_the_host_end_cannot_take_are_counted_as_dropped") {
        return;
    }
    let (ns, a, b) = pair(1280);
    let (rejected, transmitted, dropped) = ns.enter(|| {
        let mut tx = TxPort::open(&a, 2048, BindMode::Copy).expect("TX socket");
        let mut rejected = 0;
        for i in 0..100 {
            // Every fourth one fits.
            let len = if i % 4 == 0 { 1000 } else { 1400 };
            assert!(tx.queue(&frame(len, i), None));
            if i % 10 == 9 {
                rejected += tx.flush();
            }
        }
        rejected += drain(&mut tx);
        (rejected, tx.transmitted(), tx.dropped())
    });
    assert_eq!(rejected, 0);
    assert_eq!((transmitted, dropped), (25, 75));
    assert_eq!(rx_packets(&ns, &b), 25);
}
