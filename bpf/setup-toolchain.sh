#!/usr/bin/env bash
# Installs the toolchain that builds the Rust XDP probe on Debian 12 (see docs/building.md):
# Debian's Rust 1.96 with its standard-library source (for -Z build-std=core on
# bpfel-unknown-none) and bpf-linker 0.10.4. Idempotent: re-running skips what is present.
set -euo pipefail

BPF_LINKER_VERSION=0.10.4

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup-toolchain: run as root (apt-get is needed)" >&2
        exit 1
    fi
}

if [ ! -x /usr/bin/rustc ] || [ ! -d /usr/lib/rustlib/src/rust/library/core ]; then
    need_root
    echo "setup-toolchain: installing Debian's rustc-web, cargo-web, rust-web-src"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rustc-web cargo-web rust-web-src
fi

have_linker() {
    command -v bpf-linker >/dev/null 2>&1 &&
        bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"
}
if ! have_linker; then
    echo "setup-toolchain: installing bpf-linker $BPF_LINKER_VERSION"
    cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked
fi

/usr/bin/rustc --version
bpf-linker --version
