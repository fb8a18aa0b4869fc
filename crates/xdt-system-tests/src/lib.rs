//! xdt's whole-appliance tests live in this crate's `tests/`, one file per area: the probe, CLI,
//! agent and central together in network namespaces (`e2e`, `pipeline`, `steer`, `namespaces`,
//! `demo`), the daemons' systemd side (`systemd`, `units`), the Debian VM (`vm`), the Nix module
//! (`nix`), Kubernetes manifests under podman (`kubernetes`), flows against real collectors
//! (`flows`, `ipfix`). They run the workspace's release or debug binaries from the target
//! directory, so run them through `cargo test --workspace` (or build the workspace first).
//! Tests of one crate's own behaviour stay in that crate.
