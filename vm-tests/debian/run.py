#!/usr/bin/env python3
"""Run a NixOS-style VM test script against Debian 12 VMs under qemu.

    sudo python3 vm-tests/debian/run.py --scenario vm-tests/smoke.py

Builds (or reuses) the cached Debian base, writes one disk per node (vm-tests/debian/nodes/),
joins the nodes' vlans point to point, runs the script with the NixOS test driver's globals,
and exits 0 if it passed. See README.md beside this file.
"""

import argparse
import atexit
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

import image  # noqa: E402
from driver import (  # noqa: E402
    Driver, GlobalTimeout, Logger, Machine, MachineError, Nic, QemuConfig, TestScriptError,
    exit_on_signals, install_global_timeout, probe_accel, script_frames,
)

KEPT_RUNS = 10
# How the scenario learns of --upgrade-deb: an environment variable, absent under NixOS.
UPGRADE_ENV = "XDT_VM_UPGRADE_DEB"
SOCKET_PATH_MAX = 107  # sun_path, less its terminating NUL


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", type=Path, default=image.REPO / "vm-tests" / "scenario.py",
                   help="test script (default: vm-tests/scenario.py)")
    p.add_argument("--deb", type=Path,
                   help="xdt's Debian package, installed in every node (cargo xtask deb);"
                        " without it no xdt is installed")
    p.add_argument("--upgrade-deb", type=Path,
                   help="a newer build of the package, which the scenario's upgrade subtest"
                        f" installs over the running one (the script sees it as ${UPGRADE_ENV})")
    p.add_argument("--nodes", default="",
                   help="comma-separated node names (default: every node under nodes/)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto: KVM if it boots a guest, else TCG")
    p.add_argument("--timeout", type=int, default=20 * 60,
                   help="global timeout of the whole run in seconds (default: 1200)")
    p.add_argument("--keep", action="store_true",
                   help="keep the node disks in the run directory")
    return p.parse_args()


def check_host() -> None:
    if os.geteuid() != 0:
        raise SystemExit("run.py needs root (mmdebstrap, file ownership in the guest disks)")
    missing = [t for t in ("mmdebstrap", "qemu-system-x86_64", "mkfs.ext4") if not shutil.which(t)]
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: `cargo xtask setup --tests` installs them"
            " (qemu-system-x86, mmdebstrap, e2fsprogs)"
        )


def new_run_dir() -> Path:
    runs = image.cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(runs.iterdir())[:-KEPT_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    run = runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    (run / "vlan").mkdir(parents=True)
    return run


def make_machines(nodes: list[image.Node], run: Path, accel: str, logger: Logger) -> list[Machine]:
    """The nodes' VMs, booting the kernel and initrd copied to the run directory."""

    def socket(path: Path) -> Path:
        if len(str(path)) > SOCKET_PATH_MAX:
            raise SystemExit(f"AF_UNIX socket path too long (set a shorter XDT_VM_CACHE): {path}")
        return path

    def vlan_socket(vlan: int, node: image.Node) -> Path:
        return socket(run / "vlan" / f"{vlan}-{node.name}.sock")

    machines = []
    for node in nodes:
        nics = [Nic(node.mac(0))]  # eth0, connected to nothing
        for vlan in node.vlans:
            peers = [n for n in nodes if n is not node and vlan in n.vlans]
            if peers:
                nics.append(
                    Nic(node.mac(vlan), vlan_socket(vlan, node), vlan_socket(vlan, peers[0]))
                )
            else:
                logger.log(f"{node.name}: vlan {vlan} has no other node in this run: unplugged")
                nics.append(Nic(node.mac(vlan)))
        state_dir = run / node.name
        socket(state_dir / "backdoor.sock")
        config = QemuConfig(
            kernel=run / "vmlinuz", initrd=run / "initrd.img", cmdline=image.KERNEL_CMDLINE,
            disk=state_dir / "disk.img", memory=node.memory, nics=tuple(nics), accel=accel,
        )
        machines.append(Machine(node.name, state_dir, config, logger))
    return machines


def main() -> int:
    args = parse_args()
    check_host()
    started = time.monotonic()
    run = new_run_dir()
    logger = Logger(run / "driver.log")
    logger.log(f"run directory {run}")
    exit_on_signals()
    install_global_timeout(args.timeout)
    timings: list[str] = []
    driver = None
    scenario = args.scenario.resolve()
    for deb in (args.deb, args.upgrade_deb):
        if deb is not None and not deb.is_file():
            raise SystemExit(f"no package {deb}")
    if args.upgrade_deb is not None:
        os.environ[UPGRADE_ENV] = str(args.upgrade_deb.resolve())
    try:
        t = time.monotonic()
        base = image.base(logger.log)
        timings.append(f"base image: {time.monotonic() - t:.1f} s (kernel {base.kernel_version})")
        shutil.copy(base.kernel, run / "vmlinuz")  # the base may be replaced during the run
        shutil.copy(base.initrd, run / "initrd.img")

        nodes = image.load_nodes([n for n in args.nodes.split(",") if n])
        for node in nodes:
            (run / node.name).mkdir()
            t = time.monotonic()
            with logger.nested(f"writing the disk of {node.name}"):
                image.build_disk(base, node, nodes, args.deb and args.deb.resolve(),
                                 run / node.name / "disk.img", logger.log)
            timings.append(f"{node.name} disk: {time.monotonic() - t:.1f} s")

        accel = args.accel if args.accel != "auto" else probe_accel(base.kernel, logger.log)
        timings.append(f"accelerator: {accel}")
        driver = Driver(make_machines(nodes, run, accel, logger), logger)
        atexit.register(driver.release)

        t = time.monotonic()
        driver.run_script(scenario)
        timings.append(f"scenario: {time.monotonic() - t:.1f} s")
        result = 0
    except BaseException as e:  # whatever it is, it is reported and the VMs are released
        signal.alarm(0)
        report_failure(e, scenario, logger, driver)
        result = 1
    finally:
        signal.alarm(0)
        if driver is not None:
            driver.release()
            for machine in driver.machines:
                for boot, seen in enumerate(machine.boots, start=1):
                    timings.append(f"{machine.name} boot {boot}: " + (", ".join(
                        f"{what} after {secs:.1f} s" for what, secs in seen.items()
                    ) or "no root shell yet"))
        if not args.keep:
            for disk in [*run.glob("*/disk.img"), run / "vmlinuz", run / "initrd.img"]:
                disk.unlink(missing_ok=True)
        shutil.rmtree(run / "vlan", ignore_errors=True)
    timings.append(f"total: {time.monotonic() - started:.1f} s")
    logger.log("timings:\n  " + "\n  ".join(timings))
    logger.log(("PASSED" if result == 0 else "FAILED") + f" {scenario.name} (logs in {run})")
    return result


def report_failure(e: BaseException, scenario: Path, logger: Logger, driver: Driver | None) -> None:
    logger.log("!!! " + (f"subtest {' > '.join(logger.subtests)}: " if logger.subtests else "")
               + type(e).__name__ + (f": {e}" if str(e) else ""))
    frames = script_frames(e, scenario)
    if frames:
        logger.log("!!! in the test script:\n" + "\n".join(frames))
    expected = (TestScriptError, MachineError, GlobalTimeout, KeyboardInterrupt, SystemExit,
                AssertionError)
    if not isinstance(e, expected):
        logger.log("".join(traceback.format_exception(e)))
    for machine in driver.machines if driver else []:
        if machine.console_log.exists():
            logger.log(f"--- {machine.name}: last lines of {machine.console_log} ---\n"
                       + (machine.console_tail() or "(no console output yet)"))
        # Only a script failure leaves the guest shells free to answer.
        if machine.is_up() and not isinstance(e, (MachineError, GlobalTimeout, KeyboardInterrupt)):
            try:
                journal = machine.save_journal()
            except (MachineError, TestScriptError) as why:
                journal = f"(no journal: {why})"
            logger.log(f"--- {machine.name}: journal ({machine.state_dir / 'journal.txt'}) ---\n"
                       + journal)


if __name__ == "__main__":
    sys.exit(main())
