//! A program the kernel's verifier refuses is reported as refused, with the verifier's own
//! words, not as missing privileges (the verifier's refusals come back as EACCES, which other
//! BPF calls use for a denied permission). Needs root.

use xdt_datapath::{
    Error,
    probe::{Capacity, LoadedProbe, UNVERIFIABLE_OBJECT},
};
use xdt_testkit::root_or_skip;

#[test]
fn a_program_the_verifier_refuses_is_reported_with_its_log() {
    if !root_or_skip("a_program_the_verifier_refuses_is_reported_with_its_log") {
        return;
    }
    let Err(error) = LoadedProbe::load_object(UNVERIFIABLE_OBJECT, Capacity::default()) else {
        panic!("the verifier loaded a program that reads the packet unchecked");
    };
    let words = xdt_systemd::logging::error_chain(&error);
    assert!(matches!(error, Error::Load(_)), "{words}");
    assert!(words.contains("invalid access to packet"), "{words}");
}
