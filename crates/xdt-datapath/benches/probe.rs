//! ns/packet of the xdt probe against an empty XDP_PASS program and a plain single-LPM-trie
//! labeller, with BPF_PROG_TEST_RUN, at 0, 100, 10k and 100k rules (mixed IPv4/IPv6 prefixes).
//! Run as root: `cargo bench -p xdt-datapath --bench probe` (results: docs/benchmarks.md).
//!
//! All programs are measured in one process, interleaved, on the same two packets. Each rule
//! count loads the three programs `LOADS` times afresh (new JIT images and maps: the figures move
//! with placement); per load a figure is the median of `ROUNDS` runs of `REPEAT` packets; the
//! table shows the median over loads, and for the probe's net cost the range too.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{LpmTrie, lpm_trie::Key},
    programs::Xdp,
};
use xdt_datapath::{
    probe::{BENCH_LPM_OBJECT, BENCH_PASS_OBJECT, Capacity, LoadedProbe, test_run},
    rules::{Cidr, Rule, check},
};
use xdt_testkit::frames::{ETH_P_IP, ETH_P_IPV6, TCP, ethernet, ipv4, ipv6, tcp, v6};

const REPEAT: u32 = 500_000;
const ROUNDS: usize = 5;
/// Fresh loads of all three programs per rule count (placement changes the figures).
const LOADS: usize = 5;
const SIZES: [usize; 4] = [0, 100, 10_000, 100_000];
const LABELS: usize = 1000;

/// xorshift64*: deterministic rule sets without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn masked(bits: u128, len: u8, v4: bool) -> IpAddr {
    if v4 {
        let a = (bits >> 96) as u32;
        let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        IpAddr::from((a & m).to_be_bytes())
    } else {
        let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        IpAddr::from((bits & m).to_be_bytes())
    }
}

/// `n` destination-prefix rules, half IPv4 (/16-/32), half IPv6 (/32-/64), plus one rule of
/// each family that covers the benchmark packets, so the packets always find a label.
fn rule_set(n: usize) -> Vec<Rule> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rules = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::new();
    if n > 0 {
        let mut r = Rule::new("bench-v4");
        r.dst = Some(Cidr {
            addr: "198.18.0.0".parse().expect("ip"),
            len: 24,
        });
        rules.push(r);
        let mut r = Rule::new("bench-v6");
        r.dst = Some(Cidr {
            addr: "fd00:be::".parse().expect("ip"),
            len: 64,
        });
        rules.push(r);
    }
    while rules.len() < n {
        let v4 = rules.len() % 2 == 0;
        let len = if v4 {
            [16, 20, 24, 28, 32][(rng.next() % 5) as usize]
        } else {
            [32, 40, 48, 56, 64][(rng.next() % 5) as usize]
        };
        let bits = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let cidr = Cidr {
            addr: masked(bits, len, v4),
            len,
        };
        if !seen.insert(cidr) {
            continue;
        }
        let mut r = Rule::new(&format!("l{}", rules.len() % LABELS));
        r.dst = Some(cidr);
        rules.push(r);
    }
    rules
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn ns(program: &Xdp, frame: &[u8]) -> f64 {
    let (verdict, mean): (u32, Duration) = test_run(program, frame, REPEAT).expect("test run");
    assert_eq!(verdict, 2, "XDP_PASS expected");
    mean.as_secs_f64() * 1e9
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .expect("program")
        .try_into()
        .expect("xdp")
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("probe benchmark: needs root (BPF_PROG_TEST_RUN); run it with sudo");
        return;
    }
    // One CPU for every run: per-CPU maps and caches stay put.
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(1).expect("cpu 1");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).expect("pin to cpu 1");
    let v4 = ethernet(
        ETH_P_IP,
        &ipv4(
            [10, 0, 0, 1],
            [198, 18, 0, 10],
            TCP,
            &tcp(40000, 80, 0x02, b""),
        ),
    );
    let v6f = ethernet(
        ETH_P_IPV6,
        &ipv6(
            v6([0xfd00, 1, 0, 0, 0, 0, 0, 1]),
            v6([0xfd00, 0xbe, 0, 0, 0, 0, 0, 10]),
            TCP,
            &tcp(40000, 80, 0x02, b""),
        ),
    );

    println!(
        "| rules | trie nodes | empty v4 | xdt v4 | lpm v4 | xdt net v4 [min-max] | lpm net v4 | lpm/xdt v4 \
         | empty v6 | xdt v6 | lpm v6 | xdt net v6 [min-max] | lpm net v6 | lpm/xdt v6 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // XDT_BENCH_SIZES=100,10000 measures other rule counts.
    let sizes: Vec<usize> = std::env::var("XDT_BENCH_SIZES").map_or_else(
        |_| SIZES.to_vec(),
        |v| {
            v.split(',')
                .map(|n| n.trim().parse().expect("XDT_BENCH_SIZES: numbers"))
                .collect()
        },
    );
    for n in sizes {
        let rules = rule_set(n);
        let checked = check(&rules, n.max(1) as u32, u32::MAX).expect("rules compile");
        // Per load: [empty, xdt, lpm] x [v4, v6], each the median of ROUNDS interleaved runs.
        let mut loads: Vec<[f64; 6]> = Vec::new();
        for _ in 0..LOADS {
            loads.push(measure_one_load(&rules, checked.trie_nodes, &v4, &v6f));
        }
        let column = |i: usize| median(loads.iter().map(|l| l[i]).collect());
        let net = |x: usize, e: usize| -> Vec<f64> { loads.iter().map(|l| l[x] - l[e]).collect() };
        let range = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            format!("{:.0} [{lo:.0}-{hi:.0}]", median(v.to_vec()))
        };
        let (x4, l4, x6, l6) = (net(1, 0), net(2, 0), net(4, 3), net(5, 3));
        println!(
            "| {n} | {} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.2}x | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.2}x |",
            checked.trie_nodes,
            column(0),
            column(1),
            column(2),
            range(&x4),
            median(l4.clone()),
            median(l4) / median(x4),
            column(3),
            column(4),
            column(5),
            range(&x6),
            median(l6.clone()),
            median(l6) / median(x6),
        );
    }
}

/// Loads the three programs afresh (new JIT images, new maps) and measures them.
fn measure_one_load(rules: &[Rule], trie_nodes: u32, v4: &[u8], v6f: &[u8]) -> [f64; 6] {
    let n = rules.len();
    let mut pass = Ebpf::load(BENCH_PASS_OBJECT).expect("load pass");
    xdp(&mut pass, "bench_pass")
        .load()
        .expect("load pass program");
    let mut probe = LoadedProbe::load(Capacity {
        max_rules: n.max(1) as u32,
        trie_nodes: trie_nodes.max(1),
        ..Capacity::default()
    })
    .expect("load probe");
    probe.maps().expect("maps").install(rules).expect("install");

    let mut lpm = EbpfLoader::new().load(BENCH_LPM_OBJECT).expect("load lpm");
    xdp(&mut lpm, "bench_lpm").load().expect("load lpm program");
    let ids: HashMap<&str, u32> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.label.as_str(), (i % LABELS) as u32 + 1))
        .collect();
    {
        let mut t4: LpmTrie<_, [u8; 4], u32> = lpm
            .map_mut("BENCH_LPM_V4")
            .expect("map")
            .try_into()
            .expect("lpm");
        for r in rules
            .iter()
            .filter(|r| r.dst.is_some_and(|c| c.addr.is_ipv4()))
        {
            let c = r.dst.expect("dst");
            let IpAddr::V4(a) = c.addr else {
                unreachable!()
            };
            t4.insert(
                &Key::new(u32::from(c.len), a.octets()),
                ids[r.label.as_str()],
                0,
            )
            .expect("insert");
        }
    }
    {
        let mut t6: LpmTrie<_, [u8; 16], u32> = lpm
            .map_mut("BENCH_LPM_V6")
            .expect("map")
            .try_into()
            .expect("lpm");
        for r in rules
            .iter()
            .filter(|r| r.dst.is_some_and(|c| c.addr.is_ipv6()))
        {
            let c = r.dst.expect("dst");
            let IpAddr::V6(a) = c.addr else {
                unreachable!()
            };
            t6.insert(
                &Key::new(u32::from(c.len), a.octets()),
                ids[r.label.as_str()],
                0,
            )
            .expect("insert");
        }
    }

    let mut samples: [Vec<f64>; 6] = Default::default();
    for _ in 0..ROUNDS {
        let programs = [
            xdp(&mut pass, "bench_pass") as &Xdp,
            probe.program().expect("probe"),
            xdp(&mut lpm, "bench_lpm"),
        ];
        for (i, program) in programs.iter().enumerate() {
            samples[i].push(ns(program, v4));
            samples[3 + i].push(ns(program, v6f));
        }
    }
    // The probe must have labelled every packet it ran on.
    if n > 0 {
        let counts = probe.maps().expect("maps").label_counts().expect("labels");
        let labelled: u64 = counts.iter().map(|l| l.packets).sum();
        assert_eq!(
            labelled,
            u64::from(REPEAT) * 2 * ROUNDS as u64,
            "every benchmark packet matches a rule"
        );
    }
    samples.map(median)
}
