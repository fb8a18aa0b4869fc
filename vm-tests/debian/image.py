"""Debian 12 guest images for the VM tests.

The base (a Debian root file system from mmdebstrap, its kernel and initrd, and the .debs of the
packages nodes add) is built once and cached under a key made of everything that goes into it.
Each node's disk is a copy of the base with the common guest files (./guest), xdt's Debian
package and the node's own packages installed, the node's own overlay and its generated
network, host name and hosts files, written into a raw ext4 image with `mkfs.ext4 -d`.
"""

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NODES_DIR = HERE / "nodes"
GUEST_DIR = HERE / "guest"

SUITE = "bookworm"
PACKAGES = [
    "systemd", "systemd-sysv", "udev", "dbus", "kmod", "linux-image-amd64",
    "iproute2", "curl", "procps", "ethtool", "iputils-ping", "netcat-openbsd",
    "python3-minimal",  # the guest side of the root shell (guest/usr/lib/xdt-vm/backdoor)
]
# The initrd only has to find an ext4 root on virtio-blk; a short list keeps it small.
INITRD_MODULES = ["virtio_pci", "virtio_blk", "ext4"]
# Kernel modules no guest here can use (real hardware), dropped to make node disks faster to write.
PRUNED_MODULE_DIRS = [
    "drivers/ata", "drivers/gpu", "drivers/media", "drivers/infiniband", "drivers/scsi",
    "drivers/usb", "drivers/net/ethernet", "drivers/net/wireless", "drivers/iio", "sound",
    "net/bluetooth", "net/mac80211", "net/wireless",
]
MMDEBSTRAP_ARGS = [
    "--variant=apt", "--mode=root", "--include=" + ",".join(PACKAGES),
    *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")),
    "--essential-hook=mkdir -p \"$1/etc/initramfs-tools/conf.d\" "
    "\"$1/usr/share/initramfs-tools/modules.d\""
    " && echo MODULES=list >\"$1/etc/initramfs-tools/conf.d/xdt-vm.conf\""
    f" && printf '%s\\n' {' '.join(INITRD_MODULES)}"
    " >\"$1/usr/share/initramfs-tools/modules.d/xdt-vm\"",
    "--customize-hook=cd \"$1\"/usr/lib/modules/* && rm -rf "
    + " ".join(f"kernel/{d}" for d in PRUNED_MODULE_DIRS)
    + " && chroot \"$1\" depmod -a \"${PWD##*/}\"",
]

KERNEL_CMDLINE = (
    "console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1 fsck.mode=skip "
    "loglevel=4 systemd.show_status=true"
)
# Enabled or masked in every node, on top of what the node's node.toml enables.
GUEST_ENABLED_UNITS = ["xdt-vm-backdoor.service", "systemd-networkd.service"]
GUEST_MASKED_UNITS = [
    "getty@tty1.service", "serial-getty@ttyS0.service", "apt-daily.timer",
    "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "fstrim.timer", "e2scrub_all.timer",
    "e2scrub_reap.service",
]
DISK_SIZE = "4G"

Log = Callable[[str], None]


def cache_dir() -> Path:
    """Where bases and runs live: $XDT_VM_CACHE, else target/vm-tests in the repository."""
    return Path(os.environ.get("XDT_VM_CACHE", REPO / "target" / "vm-tests")).resolve()


def apt_sources() -> Path:
    """The apt sources the base is built from: $XDT_VM_APT_SOURCES, else this machine's own."""
    if "XDT_VM_APT_SOURCES" in os.environ:
        return Path(os.environ["XDT_VM_APT_SOURCES"])
    for candidate in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        if Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit("no Debian apt sources on this machine; set XDT_VM_APT_SOURCES")


@dataclasses.dataclass(frozen=True)
class Base:
    rootfs: Path
    debs: Path  # debs/PACKAGE/*.deb: a node package and what it needs beyond the base
    kernel: Path
    initrd: Path
    kernel_version: str


def node_packages() -> list[str]:
    """Every package a node's node.toml adds (`packages`), sorted."""
    wanted = set()
    for spec in NODES_DIR.glob("*/node.toml"):
        with open(spec, "rb") as f:
            wanted.update(tomllib.load(f).get("packages", []))
    return sorted(wanted)


def _mmdebstrap_args(packages: list[str]) -> list[str]:
    """MMDEBSTRAP_ARGS, and for each of `packages` a hook that downloads it and whatever it needs
    beyond the base into debs/PACKAGE beside the root file system, before mmdebstrap removes the
    package lists: nodes install them from there, offline, and only on the nodes that ask."""
    hooks = [
        f"--customize-hook=chroot \"$1\" apt-get clean && mkdir -p \"$1/../debs/{package}\""
        " && chroot \"$1\" apt-get install --yes --download-only --no-install-recommends"
        f" {package} && mv \"$1\"/var/cache/apt/archives/*.deb \"$1/../debs/{package}/\""
        for package in packages
    ]
    return [*MMDEBSTRAP_ARGS, *hooks]


def base(log: Log) -> Base:
    """The cached base for the current recipe, built (and older bases removed) if missing."""
    args = _mmdebstrap_args(node_packages())
    recipe = json.dumps({"suite": SUITE, "mmdebstrap": args}, sort_keys=True)
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    root = cache_dir() / "base"
    done = root / key
    root.mkdir(parents=True, exist_ok=True)
    with open(root.parent / "base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait and reuse it
        if (done / "ok").exists():
            log(f"using the cached base {done}")
        else:
            _build_base(root, key, args, log)
    return Base(
        rootfs=done / "rootfs",
        debs=done / "debs",
        kernel=done / "vmlinuz",
        initrd=done / "initrd.img",
        kernel_version=(done / "kernel-version").read_text(),
    )


def _build_base(root: Path, key: str, args: list[str], log: Log) -> None:
    """Build base `key` in `root`, replacing any other."""
    for old in root.iterdir():
        shutil.rmtree(old)
    building = root / f"{key}.building"
    sources = apt_sources()
    log(f"building the Debian {SUITE} base {key} with mmdebstrap from {sources}")
    started = time.monotonic()
    building.mkdir()
    with open(building / "mmdebstrap.log", "wb") as out:
        result = subprocess.run(
            ["mmdebstrap", *args, SUITE, str(building / "rootfs"), str(sources)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        tail = (building / "mmdebstrap.log").read_text(errors="replace").splitlines()[-30:]
        raise SystemExit("mmdebstrap failed:\n" + "\n".join(tail))
    boot = building / "rootfs" / "boot"
    (kernel,) = boot.glob("vmlinuz-*")
    (initrd,) = boot.glob("initrd.img-*")
    shutil.copy(kernel, building / "vmlinuz")
    shutil.copy(initrd, building / "initrd.img")
    (building / "kernel-version").write_text(kernel.name.removeprefix("vmlinuz-"))
    (building / "ok").touch()
    building.rename(root / key)
    log(f"built the base in {time.monotonic() - started:.0f} s")


@dataclasses.dataclass(frozen=True)
class Node:
    """A node of the test network, from vm-tests/debian/nodes/<name>/.

    node.toml has `vlans` (the node's NICs eth1, eth2, ... in this order), `units` (to enable),
    optionally `packages` (Debian packages to install besides xdt's) and `memory` (MiB);
    rootfs/ beside it is copied over the guest's root.
    """

    name: str
    index: int  # 1-based, in the alphabetical order of the run's node names
    vlans: tuple[int, ...]
    units: tuple[str, ...]
    packages: tuple[str, ...]
    memory: int

    @property
    def overlay(self) -> Path:
        return NODES_DIR / self.name / "rootfs"

    def mac(self, vlan: int) -> str:
        """MAC of the node's NIC on `vlan` (0 for its unconnected eth0)."""
        return f"52:54:00:12:{vlan:02x}:{self.index:02x}"

    def address(self, vlan: int) -> str:
        return f"192.168.{vlan}.{self.index}"

    def address6(self, vlan: int) -> str:
        return f"2001:db8:{vlan}::{self.index}"


def load_nodes(names: list[str]) -> list[Node]:
    """The named nodes (all under nodes/ if none are named), sorted and numbered by name."""
    available = sorted(p.name for p in NODES_DIR.iterdir() if (p / "node.toml").is_file())
    unknown = set(names) - set(available)
    if unknown:
        raise SystemExit(f"no node {', '.join(sorted(unknown))} under {NODES_DIR}")
    nodes = []
    for index, name in enumerate(sorted(names or available), start=1):
        with open(NODES_DIR / name / "node.toml", "rb") as f:
            spec = tomllib.load(f)
        nodes.append(Node(
            name=name,
            index=index,
            vlans=tuple(spec.get("vlans", [])),
            units=tuple(spec.get("units", [])),
            packages=tuple(spec.get("packages", [])),
            memory=spec.get("memory", 1024),
        ))
    for vlan in {v for n in nodes for v in n.vlans}:
        members = [n.name for n in nodes if vlan in n.vlans]
        if len(members) > 2:
            raise SystemExit(f"vlan {vlan} joins {', '.join(members)}: a vlan is point-to-point")
    return nodes


def _replace(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_text(content)


def _copy_tree(source: Path, target: Path) -> None:
    """Copy a directory's contents over `target`, replacing files (and keeping modes)."""
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir() and not path.is_symlink():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        shutil.copy2(path, dest, follow_symlinks=False)


def _install_packages(rootfs: Path, base: Base, node: Node, deb: Path | None, log: Log) -> None:
    """xdt's Debian package and the node's own, installed as an operator would: `apt install
    ./xdt_*.deb` (in a chroot, where maintainer scripts see no running systemd and start
    nothing); the node's packages from the .debs the base downloaded, so offline."""
    debs = {} if deb is None else {deb.name: deb}
    if deb is None:
        log("no package given: xdt is not installed")
    for package in node.packages:
        found = sorted((base.debs / package).glob("*.deb"))
        if not found:
            raise SystemExit(f"{node.name}: the base has no .deb of {package} in {base.debs}")
        debs.update((path.name, path) for path in found)  # a dependency of two packages once
    if not debs:
        return
    inside = Path("/tmp/xdt-vm-debs")
    (rootfs / inside.relative_to("/")).mkdir()
    for name, path in debs.items():
        shutil.copy2(path, rootfs / inside.relative_to("/") / name)
    result = subprocess.run(
        ["chroot", str(rootfs), "apt-get", "install", "--yes", "--no-install-recommends",
         *(str(inside / name) for name in sorted(debs))],
        capture_output=True, text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"},
    )
    shutil.rmtree(rootfs / inside.relative_to("/"))
    if result.returncode != 0:
        raise SystemExit(f"apt install {' '.join(sorted(debs))} failed in the guest image:\n"
                         f"{result.stdout[-3000:]}{result.stderr[-3000:]}")


def _network_files(node: Node, nodes: list[Node]) -> dict[str, str]:
    """systemd-networkd files for the node's vlan NICs, its host name and /etc/hosts."""
    files = {"etc/hostname": f"{node.name}\n", "etc/resolv.conf": ""}
    hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    for other in nodes:
        if other.vlans:
            first = other.vlans[0]
            hosts.append(f"{other.address(first)} {other.name}")
            hosts.append(f"{other.address6(first)} {other.name}")
    files["etc/hosts"] = "\n".join(hosts) + "\n"
    for vlan in node.vlans:
        files[f"etc/systemd/network/10-vlan{vlan}.network"] = (
            f"[Match]\nMACAddress={node.mac(vlan)}\n\n"
            f"[Network]\nAddress={node.address(vlan)}/24\nAddress={node.address6(vlan)}/64\n"
            "IPv6AcceptRA=no\nLinkLocalAddressing=ipv6\n"
        )
    return files


def build_disk(
    base: Base, node: Node, nodes: list[Node], deb: Path | None, disk: Path, log: Log,
) -> None:
    """Write `node`'s raw ext4 root disk to `disk`."""
    with tempfile.TemporaryDirectory(dir=disk.parent, prefix=f"{node.name}-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["cp", "-a", str(base.rootfs), str(rootfs)], check=True)
        _copy_tree(GUEST_DIR, rootfs)
        _install_packages(rootfs, base, node, deb, log)
        for path, content in _network_files(node, nodes).items():
            _replace(rootfs / path, content)
        machine_id = hashlib.sha256(f"xdt-vm {node.name}".encode()).hexdigest()[:32]
        _replace(rootfs / "etc/machine-id", machine_id + "\n")
        if node.overlay.is_dir():  # last: a node may override any of the above
            _copy_tree(node.overlay, rootfs)
        subprocess.run(["systemd-sysusers", f"--root={rootfs}"], check=True)
        for verb, units in (
            ("enable", [*GUEST_ENABLED_UNITS, *node.units]), ("mask", GUEST_MASKED_UNITS),
        ):
            result = subprocess.run(
                ["systemctl", f"--root={rootfs}", "--quiet", verb, *units],
                capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise SystemExit(
                    f"{node.name}: systemctl {verb} {' '.join(units)} failed:\n{result.stderr}"
                )
        subprocess.run(["truncate", "-s", DISK_SIZE, str(disk)], check=True)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs), str(disk)], check=True
        )
