//! ns/packet of the xdt probe against an empty XDP_PASS program and a plain single-LPM-trie
//! labeller, with BPF_PROG_TEST_RUN, at 0, 100, 10k and 100k rules (mixed IPv4/IPv6 prefixes);
//! then the probe with flows off and on at 1k and 100k active flows.
//! Run as root: `cargo bench -p xdt-datapath --bench probe` (results: docs/benchmarks.md).
//!
//! All programs are measured in one process, interleaved, on the same two packets. Each rule
//! count loads the three programs `LOADS` times afresh (new JIT images and maps: the figures move
//! with placement); per load a figure is the median of `ROUNDS` runs of `REPEAT` packets; the
//! table shows the median over loads, and for the probe's net cost the range too.
//!
//! Flows: per load, a probe with flows off and one with flows on (tables of `FLOW_TABLE`
//! entries) take the same 100 rules; the second is filled with N active flows by running one
//! packet of each through it. Both are then measured interleaved two ways: "hot", `REPEAT`
//! runs of one packet of a flow in the table (its record stays in cache), and "spread", single
//! runs of packets of `SPREAD_RUNS` flows picked at random among the N, whose records the
//! caches mostly do not hold at 100k (the kernel's time of each run is averaged; the syscall
//! between runs is outside it but leaves the caches colder, for both probes alike).
//!
//! `XDT_BENCH_BASELINE=FILE`: both tables also measure another build of the probe (its object,
//! e.g. bpf/target/bpfel-unknown-none/release/xdt of an earlier commit, with the same map
//! layouts): in the rules table loaded, filled and run interleaved with this one, in the flows
//! table loaded right after it; each row is then given per build.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{LpmTrie, lpm_trie::Key},
    programs::Xdp,
};
use xdt_common::flows::TABLE_MAPS;
use xdt_datapath::{
    probe::{BENCH_LPM_OBJECT, BENCH_PASS_OBJECT, Capacity, LoadedProbe, PROBE_OBJECT, test_run},
    rules::{Cidr, Rule, check},
};
use xdt_testkit::frames::{ETH_P_IP, ETH_P_IPV6, TCP, ethernet, ipv4, ipv6, tcp, v6};

const REPEAT: u32 = 500_000;
const ROUNDS: usize = 5;
/// Fresh loads of all three programs per rule count (placement changes the figures).
const LOADS: usize = 5;
const SIZES: [usize; 4] = [0, 100, 10_000, 100_000];
const LABELS: usize = 1000;
/// Active flows of the flows table.
const ACTIVE_FLOWS: [u32; 2] = [1_000, 100_000];
/// Entries of each flow table: room for the largest count.
const FLOW_TABLE: u32 = 131_072;
/// Single runs per figure of the spread measurement.
const SPREAD_RUNS: u32 = 20_000;

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

    let baseline: Option<Vec<u8>> = std::env::var_os("XDT_BENCH_BASELINE").map(|path| {
        let path = std::path::PathBuf::from(path);
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("XDT_BENCH_BASELINE {}: {e}", path.display()))
    });
    // XDT_BENCH_ONLY=flows measures the flows table alone.
    if std::env::var("XDT_BENCH_ONLY").is_ok_and(|v| v == "flows") {
        flows_table(baseline.as_deref());
        return;
    }
    let build = if baseline.is_some() { " build |" } else { "" };
    println!(
        "| rules |{build} trie nodes | empty v4 | xdt v4 | lpm v4 | xdt net v4 [min-max] | lpm net v4 \
         | lpm/xdt v4 | empty v6 | xdt v6 | lpm v6 | xdt net v6 [min-max] | lpm net v6 | lpm/xdt v6 |"
    );
    let build = if baseline.is_some() { "---|" } else { "" };
    println!("|---:|{build}---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
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
        // Per load: [empty, xdt, lpm] x [v4, v6] and the baseline's [v4, v6], each the median
        // of ROUNDS interleaved runs.
        let mut loads: Vec<[f64; 8]> = Vec::new();
        for _ in 0..LOADS {
            loads.push(measure_one_load(
                &rules,
                checked.trie_nodes,
                &v4,
                &v6f,
                baseline.as_deref(),
            ));
        }
        let column = |i: usize| median(loads.iter().map(|l| l[i]).collect());
        let net = |x: usize, e: usize| -> Vec<f64> { loads.iter().map(|l| l[x] - l[e]).collect() };
        let range = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            format!("{:.0} [{lo:.0}-{hi:.0}]", median(v.to_vec()))
        };
        let (l4, l6) = (net(2, 0), net(5, 3));
        // The row of the probe whose v4 and v6 figures are at `x4` and `x6`.
        let row = |build: &str, x4: usize, x6: usize| {
            let (n4, n6) = (net(x4, 0), net(x6, 3));
            println!(
                "| {n} |{build} {} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.2}x | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.2}x |",
                checked.trie_nodes,
                column(0),
                column(x4),
                column(2),
                range(&n4),
                median(l4.clone()),
                median(l4.clone()) / median(n4),
                column(3),
                column(x6),
                column(5),
                range(&n6),
                median(l6.clone()),
                median(l6.clone()) / median(n6),
            );
        };
        if baseline.is_some() {
            row(" baseline |", 6, 7);
            row(" this |", 1, 4);
        } else {
            row("", 1, 4);
        }
    }
    flows_table(baseline.as_deref());
}

/// The flows table: the probe with flows off and on, side by side (and the baseline build's
/// off and on, if given, each load right after this build's).
fn flows_table(baseline: Option<&[u8]>) {
    let builds: Vec<(&str, &[u8])> = std::iter::once(("this", PROBE_OBJECT))
        .chain(baseline.map(|object| ("baseline", object)))
        .collect();
    let build = if baseline.is_some() { " build |" } else { "" };
    println!();
    println!(
        "| active flows |{build} off hot | on hot | on - off hot [min-max] | off spread | on spread \
         | on - off spread [min-max] | flow_table_full |"
    );
    let build = if baseline.is_some() { "---|" } else { "" };
    println!("|---:|{build}---:|---:|---:|---:|---:|---:|---:|");
    let rules = rule_set(100);
    let active: Vec<u32> = std::env::var("XDT_BENCH_FLOWS").map_or_else(
        |_| ACTIVE_FLOWS.to_vec(),
        |v| {
            v.split(',')
                .map(|n| n.trim().parse().expect("XDT_BENCH_FLOWS: numbers"))
                .collect()
        },
    );
    for n in active {
        assert!(n <= FLOW_TABLE, "at most {FLOW_TABLE} active flows");
        // One TCP ACK per flow, all to the labelled 198.18.0.10:80, from 10.0.0.0/8 sources.
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let src = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
                ethernet(
                    ETH_P_IP,
                    &ipv4(src, [198, 18, 0, 10], TCP, &tcp(40000, 80, 0x10, b"")),
                )
            })
            .collect();
        // Per build: its loads' figures and the packets its tables refused.
        let mut loads: Vec<(Vec<[f64; 4]>, u64)> = vec![(Vec::new(), 0); builds.len()];
        for _ in 0..LOADS {
            for ((_, object), (figures, full)) in builds.iter().zip(&mut loads) {
                let (load, refused) = measure_flows_load(object, &rules, &frames);
                figures.push(load);
                *full += refused;
            }
        }
        for ((name, _), (loads, full)) in builds.iter().zip(&loads) {
            let column = |i: usize| median(loads.iter().map(|l| l[i]).collect());
            let net = |on: usize, off: usize| -> String {
                let v: Vec<f64> = loads.iter().map(|l| l[on] - l[off]).collect();
                let (lo, hi) = v
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                format!("{:.1} [{lo:.1}-{hi:.1}]", median(v.clone()))
            };
            let build = if baseline.is_some() {
                format!(" {name} |")
            } else {
                String::new()
            };
            println!(
                "| {n} |{build} {:.1} | {:.1} | {} | {:.1} | {:.1} | {} | {full} |",
                column(0),
                column(1),
                net(1, 0),
                column(2),
                column(3),
                net(3, 2),
            );
        }
    }
    // What a table costs in kernel memory, as the kernel accounts it (fdinfo's memlock).
    for entries in [1_000, FLOW_TABLE] {
        let probe = LoadedProbe::load(Capacity {
            flows: entries,
            ..Capacity::default()
        })
        .expect("load probe");
        let map = probe.ebpf.map(TABLE_MAPS[0]).expect("flow table");
        let aya::maps::Map::HashMap(data) = map else {
            panic!("the flow table is not a hash map");
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(data.fd()));
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
        let memlock: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("memlock in fdinfo");
        println!(
            "\nflow table of {entries} entries: {memlock} bytes of kernel memory ({} per entry; \
             two tables per probe)",
            memlock / u64::from(entries)
        );
    }
}

/// One load of the probe build `object` with flows off and one with them on, the second filled
/// with a record per frame: [off hot, on hot, off spread, on spread] and the packets refused for a full table.
fn measure_flows_load(object: &[u8], rules: &[Rule], frames: &[Vec<u8>]) -> ([f64; 4], u64) {
    let load = |flows: u32| {
        let mut probe = LoadedProbe::load_object(
            object,
            Capacity {
                max_rules: 100,
                flows,
                ..Capacity::default()
            },
        )
        .expect("load probe");
        probe.maps().expect("maps").install(rules).expect("install");
        probe
    };
    let off = load(0);
    let mut on = load(FLOW_TABLE);
    for frame in frames {
        test_run(on.program().expect("probe"), frame, 1).expect("fill");
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ frames.len() as u64);
    let picks: Vec<usize> = (0..SPREAD_RUNS)
        .map(|_| (rng.next() % frames.len() as u64) as usize)
        .collect();
    let spread = |program: &Xdp| -> f64 {
        let total: f64 = picks
            .iter()
            .map(|&i| {
                let (verdict, d) = test_run(program, &frames[i], 1).expect("test run");
                assert_eq!(verdict, 2, "XDP_PASS expected");
                d.as_secs_f64()
            })
            .sum();
        total / f64::from(SPREAD_RUNS) * 1e9
    };
    let mut samples: [Vec<f64>; 4] = Default::default();
    for _ in 0..ROUNDS {
        let (off_program, on_program) = (off.program().expect("off"), on.program().expect("on"));
        samples[0].push(ns(off_program, &frames[0]));
        samples[1].push(ns(on_program, &frames[0]));
        samples[2].push(spread(off_program));
        samples[3].push(spread(on_program));
    }
    // Every packet must have been counted in its flow.
    let flows = on.flows().expect("flows").read().expect("read flows");
    assert_eq!(flows.len(), frames.len(), "one record per active flow");
    let counted: u64 = flows.iter().map(|(_, r)| r.packets).sum();
    let runs = frames.len() as u64 + ROUNDS as u64 * u64::from(REPEAT + SPREAD_RUNS);
    let full = on
        .maps()
        .expect("maps")
        .counters()
        .expect("counters")
        .get(xdt_common::counters::Counter::FlowTableFull);
    assert_eq!(counted + full, runs, "every packet counted in its flow");
    (samples.map(median), full)
}

/// Loads the three programs, and the baseline build of the probe if given, afresh (new JIT
/// images, new maps) and measures them: [empty, xdt, lpm] x [v4, v6], then the baseline's v4
/// and v6 (0 without one).
fn measure_one_load(
    rules: &[Rule],
    trie_nodes: u32,
    v4: &[u8],
    v6f: &[u8],
    baseline: Option<&[u8]>,
) -> [f64; 8] {
    let n = rules.len();
    let mut pass = Ebpf::load(BENCH_PASS_OBJECT).expect("load pass");
    xdp(&mut pass, "bench_pass")
        .load()
        .expect("load pass program");
    let capacity = Capacity {
        max_rules: n.max(1) as u32,
        trie_nodes: trie_nodes.max(1),
        ..Capacity::default()
    };
    let load_probe = |object: &[u8]| {
        let mut probe = LoadedProbe::load_object(object, capacity).expect("load probe");
        probe.maps().expect("maps").install(rules).expect("install");
        probe
    };
    let mut probe = load_probe(PROBE_OBJECT);
    let mut base = baseline.map(load_probe);

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

    let mut samples: [Vec<f64>; 8] = Default::default();
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
        if let Some(base) = &base {
            let program = base.program().expect("baseline probe");
            samples[6].push(ns(program, v4));
            samples[7].push(ns(program, v6f));
        }
    }
    // Each probe must have labelled every packet it ran on.
    if n > 0 {
        for probe in std::iter::once(&mut probe).chain(base.as_mut()) {
            let counts = probe.maps().expect("maps").label_counts().expect("labels");
            let labelled: u64 = counts.iter().map(|l| l.packets).sum();
            assert_eq!(
                labelled,
                u64::from(REPEAT) * 2 * ROUNDS as u64,
                "every benchmark packet matches a rule"
            );
        }
    }
    samples.map(|s| if s.is_empty() { 0.0 } else { median(s) })
}
