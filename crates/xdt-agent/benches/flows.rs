//! The agent's flow work per interval: switch, grace period, drain (BPF_MAP_LOOKUP_AND_DELETE
//! _BATCH), merge, expire and IPFIX export, on 100k active flows, in the agent's own code
//! (`flows::Opened::round`). As root: `cargo bench -p xdt-agent --bench flows`
//! (docs/benchmarks.md).
//!
//! The real probe is loaded with flow tables of 131,072 entries and filled by BPF_PROG_TEST_RUN
//! with one TCP ACK of each of 100k flows before every round (the probe's cost, not measured
//! here). Two cases: "kept", the same 100k flows every round with timeouts far away (drain and
//! merge: the steady state of 100k active flows), and "exported", 100k new flows every round
//! that end in it (idle timeout of 1 ns), so 100k IPFIX records go to a UDP collector on
//! loopback per round and 100k wire records to the sink that hands them to the agent's batches
//! for central. The figure is the CPU time of the thread running the round
//! (CLOCK_THREAD_CPUTIME_ID: user and system), against the budget of one round per second: a
//! round of N ms is N/10 % of a core. What the agent's main loop then does with the records for
//! central is timed apart ("to central"): each record encoded once as the agent keeps it, and
//! the `FlowBatch` frames spliced around them (the uplink). Every flow must be drained once per round and every
//! record sent without a failed send; the report says how many messages the collector's
//! socket took (loopback drops what the reading thread does not take in time, silently for
//! the sender: that is the collector's loss, not the agent's).
#![expect(clippy::cast_precision_loss, reason = "rates for a report")]

use std::{
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use std::sync::Mutex;

use xdt_agent::flows::{FlowConfig, FlowStats, Opened};
use xdt_datapath::probe::{Capacity, LoadedProbe, test_run};
use xdt_testkit::frames::{ETH_P_IP, TCP, ethernet, ipv4, tcp};
use xdt_wire::{
    Batch, Flow, MAX_FLOWS, PROTOCOL_VERSION,
    frame::{self, EncodedItems},
};

const FLOWS: u32 = 100_000;
const TABLE: u32 = 131_072;
const ROUNDS: usize = 5;

fn thread_cpu() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("thread CPU clock");
    Duration::from(ts)
}

fn frames(round: u32) -> Vec<Vec<u8>> {
    (0..FLOWS)
        .map(|i| {
            let src = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            // A port per round makes new flows each round.
            let port = 40_000 + u16::try_from(round).expect("round");
            ethernet(
                ETH_P_IP,
                &ipv4(src, [198, 18, 0, 10], TCP, &tcp(port, 80, 0x10, b"")),
            )
        })
        .collect()
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("flows: needs root (loading the probe); run it with sudo");
        return;
    }
    println!(
        "| case | records per round | round CPU ms (median) [min-max] | % of a core at one round/s | round wall ms (median) | IPFIX records/s of CPU | to central CPU ms (median) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for exported in [false, true] {
        let mut probe = LoadedProbe::load(Capacity {
            flows: TABLE,
            ..Capacity::default()
        })
        .expect("load probe");
        let tables = probe.flows().expect("flow tables");
        let labels = probe
            .maps()
            .expect("maps")
            .label_names_handle()
            .expect("labels");
        let collector = UdpSocket::bind("127.0.0.1:0").expect("collector");
        collector
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let address = collector.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let reader = {
            let (stop, received) = (stop.clone(), received.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if collector.recv(&mut buf).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let config = FlowConfig {
            idle: if exported {
                Duration::from_nanos(1)
            } else {
                Duration::from_hours(1)
            },
            active: Duration::from_hours(1),
            ipfix: vec![address],
            ..FlowConfig::default()
        };
        let to_central: Arc<Mutex<Vec<Flow>>> = Arc::default();
        let sink = to_central.clone();
        let mut opened = Opened::new(tables, labels, 1, &config)
            .expect("flow state")
            .with_sink(Box::new(move |records| {
                sink.lock().expect("sink").extend(records);
            }));
        let mut central_cpu = Vec::new();
        let stats = FlowStats::default();
        let mut cpu = Vec::new();
        let mut wall = Vec::new();
        for round in 0..ROUNDS {
            let frames = frames(if exported {
                u32::try_from(round).expect("round")
            } else {
                0
            });
            let program = probe.program().expect("probe");
            for frame in &frames {
                test_run(program, frame, 1).expect("fill");
            }
            let (c0, w0) = (thread_cpu(), Instant::now());
            opened.round(&stats, false);
            cpu.push(thread_cpu().saturating_sub(c0).as_secs_f64() * 1e3);
            wall.push(w0.elapsed().as_secs_f64() * 1e3);
            let drained = stats.drained.load(Ordering::Relaxed);
            assert_eq!(
                drained,
                u64::from(FLOWS) * (round as u64 + 1),
                "every flow drained once per round"
            );
            let want = if exported { u64::from(FLOWS) } else { 0 };
            assert_eq!(
                opened.deltas().len() as u64,
                want,
                "deltas of round {round}"
            );
            let records = std::mem::take(&mut *to_central.lock().expect("sink"));
            assert_eq!(records.len() as u64, want, "records for central");
            let c0 = thread_cpu();
            let frames = frames_to_central(&records);
            central_cpu.push(thread_cpu().saturating_sub(c0).as_secs_f64() * 1e3);
            assert!(want == 0 || frames > 0);
        }
        let records = stats.ipfix.records.load(Ordering::Relaxed);
        let failed = stats.ipfix.failed_messages.load(Ordering::Relaxed);
        assert_eq!(failed, 0, "IPFIX sends failed");
        if exported {
            assert_eq!(
                records,
                u64::from(FLOWS) * ROUNDS as u64,
                "every record sent"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("reader");
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (lo, hi) = cpu
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let total_cpu: f64 = cpu.iter().sum::<f64>() / 1e3;
        println!(
            "| {} | {FLOWS} | {:.1} [{lo:.1}-{hi:.1}] | {:.1} | {:.1} | {} | {:.1} |",
            if exported {
                "exported (100k flows end per round)"
            } else {
                "kept (100k active flows merged)"
            },
            median(&cpu),
            median(&cpu) / 10.0,
            median(&wall),
            if exported {
                format!("{:.0}", records as f64 / total_cpu)
            } else {
                "-".to_owned()
            },
            median(&central_cpu),
        );
        if exported {
            println!(
                "\nIPFIX: {} messages sent, {} taken by the collector's socket",
                stats.ipfix.messages.load(Ordering::Relaxed),
                received.load(Ordering::Relaxed),
            );
        }
    }
}

/// What the agent does with a round's records for central, as it does it: each record encoded
/// once as it is handed over (`Shared::push_flows`), then the `FlowBatch` frames of at most
/// `MAX_FLOWS` records spliced around them (`frame::encode_batch`, the uplink). Returns how many
/// frames.
fn frames_to_central(records: &[Flow]) -> usize {
    let mut bytes = Vec::new();
    let mut ends = Vec::with_capacity(records.len());
    for record in records {
        frame::encode_item(record, &mut bytes).expect("encode");
        ends.push(bytes.len());
    }
    let batch = Batch {
        sequence: 1,
        taken_at_unix_ns: 1,
        counters: Vec::new(),
        labels: Vec::new(),
        events: Vec::new(),
        agent: xdt_wire::AgentStats::default(),
    };
    let stats = xdt_wire::FlowStats::default();
    let mut out = Vec::new();
    let (mut frames, mut first, mut start) = (0, 0, 0);
    while first < records.len() {
        let last = (first + MAX_FLOWS).min(records.len());
        let end = ends[last - 1];
        let flows = EncodedItems {
            count: last - first,
            bytes: &bytes[start..end],
        };
        out.clear();
        frame::encode_batch(
            &batch,
            EncodedItems::default(),
            Some((flows, &stats)),
            PROTOCOL_VERSION,
            &mut out,
        )
        .expect("frame within the maximum");
        frames += 1;
        (first, start) = (last, end);
    }
    frames
}
