//! What the tests and benchmarks of xdt share to run BPF programs without attaching them, behind
//! the `test-objects` feature (never in the binaries): the probe loaded with a rule set and run
//! on crafted frames with BPF_PROG_TEST_RUN, and the otel demo's counter program with the map
//! the agent exports. Test support: every failure panics with what failed.

use aya::{Ebpf, maps::Map, programs::Xdp};

use crate::{
    maps::ProbeMaps,
    probe::{Capacity, DEMO_COUNTER_OBJECT, LoadedProbe, test_run},
    rules::parse_rules,
};

/// The verdicts a test expects of the probe.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The probe loaded (verified, not attached) with a rule set installed.
#[derive(Debug)]
pub struct TestProbe {
    pub probe: LoadedProbe,
    pub maps: ProbeMaps,
}

impl TestProbe {
    /// Loads the probe with `capacity` and installs `rules` (a rules file's text).
    ///
    /// # Panics
    /// When the probe does not load or the rules do not parse or install.
    #[must_use]
    pub fn new(capacity: Capacity, rules: &str) -> Self {
        let mut probe = LoadedProbe::load(capacity).expect("load probe");
        let mut maps = probe.maps().expect("maps");
        maps.install(&parse_rules(rules, "test").expect("rules"))
            .expect("install");
        Self { probe, maps }
    }

    /// Runs the probe once on `frame`: its verdict.
    ///
    /// # Panics
    /// When BPF_PROG_TEST_RUN fails.
    #[expect(
        clippy::must_use_candidate,
        reason = "tests run frames for their counts as often as for the verdict"
    )]
    pub fn run(&self, frame: &[u8]) -> u32 {
        self.probe.test_run(frame, 1).expect("test run").0
    }
}

/// The otel demo's packet counter loaded (verified, not attached) and its `stats_map`, a
/// foreign map for the agent's `--map-id` and `--map-name`.
#[derive(Debug)]
pub struct DemoCounter {
    /// Holds the program and its map while the test runs.
    pub ebpf: Ebpf,
    /// The kernel's id of `stats_map`.
    pub map_id: u32,
}

impl DemoCounter {
    const PROGRAM: &str = "demo_counter";

    /// Loads the program; its map counts nothing yet.
    ///
    /// # Panics
    /// When the object does not load or the verifier refuses the program.
    #[must_use]
    pub fn load() -> Self {
        let mut ebpf = Ebpf::load(DEMO_COUNTER_OBJECT).expect("load demo counter");
        let program: &mut Xdp = ebpf
            .program_mut(Self::PROGRAM)
            .expect("program")
            .try_into()
            .expect("xdp");
        program.load().expect("verifier");
        let Some(Map::Array(data)) = ebpf.map("stats_map") else {
            panic!("the demo counter has no array stats_map")
        };
        let map_id = data.info().expect("info").id();
        Self { ebpf, map_id }
    }

    /// Runs the program on `frame` `packets` times (at least once), so that its map counts them.
    ///
    /// # Panics
    /// When BPF_PROG_TEST_RUN fails.
    pub fn count(&self, frame: &[u8], packets: u32) {
        let program: &Xdp = self
            .ebpf
            .program(Self::PROGRAM)
            .expect("program")
            .try_into()
            .expect("xdp");
        test_run(program, frame, packets).expect("test run");
    }
}
