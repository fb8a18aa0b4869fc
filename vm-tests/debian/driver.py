"""A NixOS-test-driver-like API over qemu VMs, so one test script runs here and as a NixOS test.

The names, arguments, defaults (timeouts in seconds) and failure behaviour of `Machine`'s
methods and of the script's globals follow nixpkgs' nixos/lib/test-driver. A command runs in
the guest through a root shell on a virtio-serial port (guest/usr/lib/xdt-vm/backdoor); each
machine's serial console is kept in <run>/<machine>/console.log.
"""

import base64
import codecs
import contextlib
import dataclasses
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import tarfile
import threading
import time
import traceback
import unittest
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

BACKDOOR_PORT = "org.xdt.backdoor"
BOOT_TIMEOUT = 600  # seconds from qemu start to the guest's root shell
SHUTDOWN_TIMEOUT = 300
# How long past its own `timeout` a command may take before the guest counts as hung.
HOST_GRACE = 60
CONSOLE_TAIL = 30
JOURNAL_TAIL = 40
ANSI_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
ANSI_ESCAPE_START = re.compile(r"\x1b(\[[0-?]*[ -/]*)?$")  # one cut short by a chunk's end
# Console lines whose time (since qemu started) each boot's timings record.
MILESTONES = {
    "root shell": "xdt-backdoor: root shell ready",
    "multi-user.target": "Reached target multi-user.target",
}


class TestScriptError(Exception):
    """The test script failed (as in the NixOS driver)."""


class RequestedAssertionFailed(TestScriptError):
    """An assertion the script asked for failed: succeed(), fail(), wait_for_*(), t.assert*()."""


class MachineError(Exception):
    """A machine itself broke: qemu exited, the guest shell hung or went away."""


class GlobalTimeout(BaseException):
    """The whole run took longer than its global timeout (not an Exception: a script's
    `except Exception` cannot swallow it)."""


class Logger:
    """Log lines with the time since the start, to stdout and <run>/driver.log."""

    def __init__(self, path: Path) -> None:
        self._started = time.monotonic()
        self._file = open(path, "a", buffering=1)
        self._depth = 0
        self._lock = threading.Lock()
        self.subtests: list[str] = []  # open subtests, innermost last

    def log(self, msg: str, attrs: dict[str, str] | None = None) -> None:
        prefix = f"{attrs['machine']}: " if attrs and "machine" in attrs else ""
        stamp = f"[{time.monotonic() - self._started:7.1f}s] " + "  " * self._depth
        with self._lock:
            for line in f"{prefix}{msg}".splitlines() or [""]:
                print(stamp + line, flush=True)
                self._file.write(stamp + line + "\n")

    info = log
    warning = log
    error = log

    def log_to_file(self, msg: str) -> None:
        with self._lock:
            self._file.write(msg + "\n")

    @contextlib.contextmanager
    def nested(self, msg: str, attrs: dict[str, str] | None = None) -> Iterator[None]:
        self.log(msg, attrs)
        started = time.monotonic()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        self.log(f"({msg}: {time.monotonic() - started:.1f} s)", attrs)

    @contextlib.contextmanager
    def subtest(self, name: str) -> Iterator[None]:
        self.subtests.append(name)
        with self.nested(f"subtest: {name}"):
            yield
        self.subtests.pop()


def retry(fn: Callable[[bool], bool], timeout_seconds: float = 900) -> None:
    """Call fn(last_try) each second until it returns True; raise after timeout_seconds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        if fn(False):
            return
        time.sleep(1)
    if not fn(True):
        raise RequestedAssertionFailed(
            f"action timed out after {time.monotonic() - started:.2f} seconds "
            f"(timeout={timeout_seconds})"
        )


# Prefix of every qemu command: qemu gets SIGKILL when the thread that started it dies, so no
# VM outlives the driver, even one killed by SIGKILL.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]


@dataclasses.dataclass(frozen=True)
class Nic:
    """A virtio NIC; with sockets, one end of a point-to-point link (qemu `-netdev dgram`)."""

    mac: str
    local_socket: Path | None = None
    remote_socket: Path | None = None


@dataclasses.dataclass(frozen=True)
class QemuConfig:
    kernel: Path
    initrd: Path
    cmdline: str
    disk: Path
    memory: int  # MiB
    nics: tuple[Nic, ...]  # eth0, eth1, ... in this order
    accel: str  # "kvm" or "tcg"


def probe_accel(kernel: Path, log: Callable[[str], None]) -> str:
    """"kvm" if a KVM guest gets as far as printing its kernel banner, else "tcg".

    Some hosts have a /dev/kvm that initialises but never runs a guest, where qemu's own
    `-accel kvm -accel tcg` fallback does not help."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log("no usable /dev/kvm: using TCG")
        return "tcg"
    process = subprocess.Popen(
        [*DIE_WITH_PARENT, "qemu-system-x86_64", "-accel", "kvm", "-cpu", "max", "-m", "256",
         "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
         "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert process.stdout
    output = b""
    deadline = time.monotonic() + 10
    try:
        while b"Linux version" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                output += chunk
    finally:
        process.kill()
        process.wait()
    if b"Linux version" in output:
        log("KVM boots a guest: using KVM")
        return "kvm"
    log("KVM did not boot a guest within 10 s: using TCG")
    return "tcg"


class Machine:
    """One qemu VM, driven like the NixOS test driver's Machine."""

    def __init__(self, name: str, state_dir: Path, config: QemuConfig, logger: Logger) -> None:
        self.name = name
        self.state_dir = state_dir
        self.config = config
        self.logger = logger
        self.console_log = state_dir / "console.log"
        self._backdoor_path = state_dir / "backdoor.sock"
        self._console_path = state_dir / "console.sock"
        self.process: subprocess.Popen | None = None
        self.booted = False
        self.connected = False
        self._shell: socket.socket | None = None
        self._shell_buffer = bytearray()
        self._shell_lock = threading.Lock()
        self._request_id = 0
        self._console_text = ""
        self._console_cursor = 0
        self._console_changed = threading.Condition()
        self._console_thread: threading.Thread | None = None
        self._started_at = 0.0
        # Per boot: seconds from its start to each of the MILESTONES seen on the console.
        self.boots: list[dict[str, float]] = []

    def __repr__(self) -> str:
        return f"<Machine '{self.name}'>"

    # -- logging -------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        """Log a message to the console."""
        self.logger.log(msg, {"machine": self.name})

    def nested(self, msg: str, attrs: dict[str, str] | None = None) -> Any:
        return self.logger.nested(msg, {"machine": self.name, **(attrs or {})})

    def console_tail(self, lines: int = CONSOLE_TAIL) -> str:
        """The last lines of the serial console, for failure reports."""
        with self._console_changed:
            text = self._console_text
        return "\n".join(text.splitlines()[-lines:])

    def save_journal(self) -> str:
        """For failure reports: the failed units and the journal of this boot, saved to
        journal.txt in the state directory; returns the failed units and the journal's tail."""
        _, failed = self.execute("systemctl --failed --no-legend --plain", timeout=30)
        _, journal = self.execute("journalctl -b --no-pager -o short-monotonic", timeout=60)
        (self.state_dir / "journal.txt").write_text(journal)
        tail = "\n".join(journal.splitlines()[-JOURNAL_TAIL:])
        return f"failed units: {failed.strip() or 'none'}\n{tail}"

    # -- lifecycle -----------------------------------------------------------------------

    def _qemu_command(self, allow_reboot: bool) -> list[str]:
        c = self.config
        cmd = [
            *DIE_WITH_PARENT, "qemu-system-x86_64", "-name", self.name, "-accel", c.accel,
            "-cpu", "max", "-smp", "1", "-m", str(c.memory), "-nodefaults", "-no-user-config",
            "-display", "none", *([] if allow_reboot else ["-no-reboot"]),
            "-kernel", str(c.kernel), "-initrd", str(c.initrd), "-append", c.cmdline,
            "-drive", f"file={c.disk},format=raw,if=virtio,cache=unsafe",
            "-chardev", f"socket,id=console,path={self._console_path}",
            "-serial", "chardev:console",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=backdoor,path={self._backdoor_path}",
            "-device", f"virtserialport,chardev=backdoor,name={BACKDOOR_PORT}",
            "-device", "virtio-rng-pci",
        ]
        for i, nic in enumerate(c.nics):
            device = f"virtio-net-pci,mac={nic.mac}"
            if nic.local_socket and nic.remote_socket:
                cmd += ["-netdev", f"dgram,id=net{i},local.type=unix,local.path={nic.local_socket},"
                        f"remote.type=unix,remote.path={nic.remote_socket}"]
                device += f",netdev=net{i}"
            cmd += ["-device", device]
        return cmd

    def is_up(self) -> bool:
        return self.booted and self.connected

    def start(self, allow_reboot: bool = False) -> None:
        """Start the VM; like NixOS, this does not wait for it to boot. Unless allow_reboot,
        a reboot in the guest powers the VM off."""
        if self.booted:
            return
        self.log("starting vm")
        listeners = {}
        for path in (self._backdoor_path, self._console_path):
            path.unlink(missing_ok=True)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(1)
            listeners[path] = listener
        for nic in self.config.nics:
            if nic.local_socket:
                nic.local_socket.unlink(missing_ok=True)
        self._started_at = time.monotonic()
        self.boots.append({})
        with open(self.state_dir / "qemu.log", "ab") as qemu_log:
            self.process = subprocess.Popen(
                self._qemu_command(allow_reboot), stdin=subprocess.DEVNULL, stdout=qemu_log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._shell = self._accept(listeners[self._backdoor_path])
            console = self._accept(listeners[self._console_path])
        finally:
            for listener in listeners.values():
                listener.close()
        self._shell_buffer.clear()
        with self._console_changed:
            self._console_text = ""
            self._console_cursor = 0
        self._console_thread = threading.Thread(
            target=self._read_console, args=(console,), name=f"{self.name}-console", daemon=True
        )
        self._console_thread.start()
        self.booted = True
        self.log(f"QEMU running (pid {self.process.pid})")

    def _accept(self, listener: socket.socket) -> socket.socket:
        listener.settimeout(1)
        deadline = time.monotonic() + 60
        while True:
            try:
                conn, _ = listener.accept()
                conn.settimeout(None)
                return conn
            except socket.timeout:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise MachineError(f"{self.name}: qemu did not connect to {listener}")

    def _read_console(self, conn: socket.socket) -> None:
        """Keep the serial console in console.log (as is) and in memory (as text without
        terminal escapes, for wait_for_console_text and failure reports)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        with conn, open(self.console_log, "ab") as out:
            while chunk := conn.recv(65536):
                out.write(chunk)
                out.flush()
                text = pending + decoder.decode(chunk)
                cut = ANSI_ESCAPE_START.search(text)
                pending = text[cut.start():] if cut else ""
                text = text[: cut.start()] if cut else text
                text = ANSI_ESCAPE.sub("", text).replace("\r", "")
                with self._console_changed:
                    recent = self._console_text[-100:] + text
                    self._console_text += text
                    self._console_changed.notify_all()
                for milestone, line in MILESTONES.items():
                    if milestone not in self.boots[-1] and line in recent:
                        self.boots[-1][milestone] = time.monotonic() - self._started_at

    def _check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            qemu_log = (self.state_dir / "qemu.log").read_text(errors="replace").strip()
            raise MachineError(
                f"{self.name}: qemu is not running (exit status "
                f"{None if self.process is None else self.process.returncode})\n"
                f"--- qemu.log ---\n{qemu_log}"
            )

    def connect(self) -> None:
        """Wait until the guest's root shell is up (starting the VM if need be)."""
        if self.connected:
            return
        with self.nested("waiting for the VM to finish booting"):
            self.start()
            deadline = self._started_at + BOOT_TIMEOUT
            try:
                while self._read_line(deadline) != b"xdt-backdoor ready":
                    pass
            except MachineError as e:
                raise MachineError(f"no root shell within {BOOT_TIMEOUT} s of starting: {e}")
            self.connected = True
            self.log("connected to guest root shell")

    def _fill(self, deadline: float | None) -> None:
        """Read more of the shell's output into the buffer."""
        assert self._shell
        while True:
            ready, _, _ = select.select([self._shell], [], [], 1)
            if ready:
                chunk = self._shell.recv(65536)
                if not chunk:
                    self._check_alive()
                    raise MachineError(f"{self.name}: guest shell disconnected")
                self._shell_buffer += chunk
                return
            self._check_alive()
            if deadline is not None and time.monotonic() > deadline:
                raise MachineError(f"{self.name}: guest shell did not answer in time")

    def _read_line(self, deadline: float | None) -> bytes:
        while (end := self._shell_buffer.find(b"\n")) < 0:
            self._fill(deadline)
        line = bytes(self._shell_buffer[:end])
        del self._shell_buffer[: end + 1]
        return line

    def _read_exact(self, size: int, deadline: float | None) -> bytes:
        while len(self._shell_buffer) < size:
            self._fill(deadline)
        data = bytes(self._shell_buffer[:size])
        del self._shell_buffer[:size]
        return data

    def wait_for_shutdown(self) -> None:
        """Wait for the VM to power off (without asking it to)."""
        if not self.booted:
            return
        with self.nested("waiting for the VM to power off"):
            assert self.process
            try:
                self.process.wait(SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise MachineError(
                    f"{self.name}: did not power off in {SHUTDOWN_TIMEOUT} s"
                ) from None
            self._stopped()

    def shutdown(self) -> None:
        """Shut the machine down and wait for the VM to exit."""
        if not self.booted:
            return
        self.execute("systemctl poweroff", check_return=False, check_output=False)
        self.wait_for_shutdown()

    def reboot(self) -> None:
        """Reboot the guest (started with allow_reboot=True); the next command waits for it."""
        self.execute("systemctl reboot", check_return=False, check_output=False)
        self.connected = False
        self._started_at = time.monotonic()
        self.boots.append({})

    def crash(self) -> None:
        """Simulate a sudden power failure: kill the VM at once."""
        if not self.booted:
            return
        self.log("forced crash")
        self.release()

    def release(self) -> None:
        """Kill the VM (by its pid) if it runs, and remove its sockets."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stopped()

    def _stopped(self) -> None:
        if self._shell:
            self._shell.close()
            self._shell = None
        if self._console_thread:
            self._console_thread.join(5)
            self._console_thread = None
        for path in (self._backdoor_path, self._console_path):
            path.unlink(missing_ok=True)
        for nic in self.config.nics:
            if nic.local_socket:
                nic.local_socket.unlink(missing_ok=True)
        self.booted = False
        self.connected = False

    # -- commands ------------------------------------------------------------------------

    def execute(
        self,
        command: str,
        check_return: bool = True,
        check_output: bool = True,
        timeout: int | None = 900,
    ) -> tuple[int, str]:
        """Run a shell command as root (bash, `set -euo pipefail`) and return (status, stdout).

        The command's stderr is logged. With a timeout (seconds), a command still running
        then is killed and its status is 124. With check_output=False the command is sent
        and (-2, "") is returned at once; with check_return=False the status is -1.
        """
        self.connect()
        assert self._shell
        with self._shell_lock:
            self._request_id += 1
            request = self._request_id
            script = command.encode()
            limit = 0 if timeout is None else timeout
            self._shell.sendall(f"{request} {limit} {len(script)}\n".encode() + script)
            if not check_output:
                return (-2, "")
            deadline = None if timeout is None else time.monotonic() + timeout + HOST_GRACE
            while True:
                header = self._read_line(deadline).decode(errors="replace").split()
                if header == ["xdt-backdoor", "ready"]:
                    raise MachineError(f"{self.name}: guest shell restarted during `{command}`")
                if len(header) != 5 or header[0] != "xdt-backdoor-done":
                    raise MachineError(f"{self.name}: unexpected guest shell output {header}")
                _, reply, status, out_size, err_size = header
                stdout = self._read_exact(int(out_size), deadline)
                stderr = self._read_exact(int(err_size), deadline)
                if int(reply) == request:  # else a reply to a check_output=False request
                    break
        shown = command if len(command) <= 1000 else command[:1000] + " [...]"
        self.logger.log_to_file(f"{self.name} $ {shown}  [exit {status}]")
        for line in stderr.decode(errors="replace").splitlines():
            self.log(f"# {line}")
        output = stdout.decode(errors="replace")
        if not check_return:
            return (-1, output)
        return (int(status), output)

    def succeed(self, *commands: str, timeout: int | None = None) -> str:
        """Run commands; raise if one exits non-zero, else return their stdout."""
        output = ""
        for command in commands:
            with self.nested(f"must succeed: {command}"):
                status, out = self.execute(command, timeout=timeout)
                if status != 0:
                    self.log(f"output: {out}")
                    raise RequestedAssertionFailed(
                        f"command `{command}` failed (exit code {status})"
                    )
                output += out
        return output

    def fail(self, *commands: str, timeout: int | None = None) -> str:
        """Like succeed(), but raise if a command exits zero."""
        output = ""
        for command in commands:
            with self.nested(f"must fail: {command}"):
                status, out = self.execute(command, timeout=timeout)
                if status == 0:
                    raise RequestedAssertionFailed(f"command `{command}` unexpectedly succeeded")
                output += out
        return output

    def wait_until_succeeds(self, command: str, timeout: int = 900) -> str:
        """Repeat a command each second until it succeeds; return its stdout."""
        output = ""

        def check_success(_last_try: bool) -> bool:
            nonlocal output
            status, output = self.execute(command, timeout=timeout)
            return status == 0

        with self.nested(f"waiting for success: {command}"):
            retry(check_success, timeout)
            return output

    def wait_until_fails(self, command: str, timeout: int = 900) -> str:
        """Repeat a command each second until it fails; return its stdout."""
        output = ""

        def check_failure(_last_try: bool) -> bool:
            nonlocal output
            status, output = self.execute(command, timeout=timeout)
            return status != 0

        with self.nested(f"waiting for failure: {command}"):
            retry(check_failure, timeout)
            return output

    def sleep(self, secs: int) -> None:
        """Sleep in guest time."""
        self.succeed(f"sleep {secs}")

    def wait_for_file(self, filename: str, timeout: int = 900) -> None:
        def check_file(_last_try: bool) -> bool:
            status, _ = self.execute(f"test -e {filename}")
            return status == 0

        with self.nested(f"waiting for file '{filename}'"):
            retry(check_file, timeout)

    def wait_for_open_port(self, port: int, addr: str = "localhost", timeout: int = 900) -> None:
        """Wait until a process listens on the TCP port at addr."""

        def port_is_open(_last_try: bool) -> bool:
            status, _ = self.execute(f"nc -z {addr} {port}")
            return status == 0

        with self.nested(f"waiting for TCP port {port} on {addr}"):
            retry(port_is_open, timeout)

    def wait_for_closed_port(
        self, port: int, addr: str = "localhost", timeout: int = 900
    ) -> None:
        """Wait until nothing listens on the TCP port at addr."""

        def port_is_closed(_last_try: bool) -> bool:
            status, _ = self.execute(f"nc -z {addr} {port}")
            return status != 0

        with self.nested(f"waiting for TCP port {port} on {addr} to be closed"):
            retry(port_is_closed, timeout)

    # -- systemd -------------------------------------------------------------------------

    def systemctl(self, q: str, user: str | None = None) -> tuple[int, str]:
        """Run `systemctl q` (for `user`, `systemctl --user q`); return (status, stdout)."""
        if user is not None:
            q = q.replace("'", "\\'")
            return self.execute(
                f"su -l {user} --shell /bin/sh -c "
                "$'XDG_RUNTIME_DIR=/run/user/`id -u` "
                f"systemctl --user {q}'"
            )
        return self.execute(f"systemctl {q}")

    def start_job(self, jobname: str, user: str | None = None) -> tuple[int, str]:
        return self.systemctl(f"start {jobname}", user)

    def stop_job(self, jobname: str, user: str | None = None) -> tuple[int, str]:
        return self.systemctl(f"stop {jobname}", user)

    def get_unit_info(self, unit: str, user: str | None = None) -> dict[str, str]:
        """The unit's properties, as `systemctl show` gives them."""
        status, lines = self.systemctl(f'--no-pager show "{unit}"', user)
        if status != 0:
            raise RequestedAssertionFailed(
                f'retrieving systemctl info for unit "{unit}"'
                + ("" if user is None else f' under user "{user}"')
                + f" failed with exit code {status}"
            )
        return dict(
            line.split("=", 1) for line in lines.splitlines() if re.match(r"^[^=]+=", line)
        )

    def get_unit_property(self, unit: str, property: str, user: str | None = None) -> str:
        """One property of the unit, as a string."""
        status, lines = self.systemctl(
            f'--no-pager show "{unit}" --property="{property}"', user
        )
        if status != 0:
            raise RequestedAssertionFailed(
                f'retrieving systemctl property "{property}" for unit "{unit}"'
                + ("" if user is None else f' under user "{user}"')
                + f" failed with exit code {status}"
            )
        match = re.match(r"^([^=]+)=(.*)$", lines)
        if match is None or match[1] != property:
            raise RequestedAssertionFailed(
                f'systemctl show --property "{property}" "{unit}" produced invalid output: {lines}'
            )
        return match[2]

    def require_unit_state(self, unit: str, require_state: str = "active") -> None:
        with self.nested(f"checking if unit '{unit}' has reached state '{require_state}'"):
            state = self.get_unit_info(unit)["ActiveState"]
            if state != require_state:
                raise RequestedAssertionFailed(
                    f"Expected unit '{unit}' to to be in state '{require_state}' "
                    f"but it is in state '{state}'"
                )

    def wait_for_unit(self, unit: str, user: str | None = None, timeout: int = 900) -> None:
        """Wait until the unit is active; raise if it fails, or is inactive with no job left."""

        def check_active(_last_try: bool) -> bool:
            state = self.get_unit_property(unit, "ActiveState", user)
            if state == "failed":
                raise RequestedAssertionFailed(f'unit "{unit}" reached state "{state}"')
            if state == "inactive":
                _, jobs = self.systemctl("list-jobs --full 2>&1", user)
                if "No jobs" in jobs:
                    if self.get_unit_info(unit, user)["ActiveState"] == state:
                        raise RequestedAssertionFailed(
                            f'unit "{unit}" is inactive and there are no pending jobs'
                        )
            return state == "active"

        with self.nested(
            f"waiting for unit {unit}" + (f" with user {user}" if user is not None else "")
        ):
            retry(check_active, timeout)

    # -- console and files ---------------------------------------------------------------

    def wait_for_console_text(self, regex: str, timeout: int | None = None) -> None:
        """Wait until the serial console output since the last match matches regex."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.nested(f"waiting for {regex} to appear on console"):
            with self._console_changed:
                while True:
                    match = re.search(regex, self._console_text[self._console_cursor :])
                    if match:
                        self._console_cursor += match.end()
                        return
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise RequestedAssertionFailed(
                            f"action timed out after {timeout} seconds (timeout={timeout})"
                        )
                    self._console_changed.wait(1.0 if left is None else min(left, 1.0))

    def get_console_log(self) -> str:
        """The whole serial console output since the VM started."""
        with self._console_changed:
            return self._console_text

    def copy_from_host(self, source: str, target: str) -> None:
        """Copy a file or directory from the host to `target` in the machine with `cp -r`, as
        NixOS does (so into `target` if that is a directory). Meant for small ones: they
        travel inside a command."""
        name = Path(source).name
        data = BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            tar.add(source, arcname=name)
        script = (
            "tmp=$(mktemp -d)\n"
            "base64 -d <<'XDT_COPY_EOF' | tar -x --no-same-owner -C \"$tmp\"\n"
            + base64.encodebytes(data.getvalue()).decode()
            + "XDT_COPY_EOF\n"
            f"mkdir -p {shlex.quote(str(Path(target).parent))}\n"
            f"cp -r \"$tmp\"/{shlex.quote(name)} {shlex.quote(target)}\n"
            "rm -rf \"$tmp\"\n"
        )
        with self.nested(f"copying {source} from the host to {target}"):
            status, _ = self.execute(script, timeout=None)
            if status != 0:
                raise RequestedAssertionFailed(
                    f"copying {source} to {target} failed (exit code {status})"
                )


class Driver:
    """The machines of a run and the globals a test script sees."""

    def __init__(self, machines: list[Machine], logger: Logger) -> None:
        self.machines = sorted(machines, key=lambda m: m.name)
        self.logger = logger

    def start_all(self) -> None:
        """Start all machines."""
        with self.logger.nested("start all VMs"):
            for machine in self.machines:
                machine.start()

    def join_all(self) -> None:
        """Wait for all machines to shut down."""
        with self.logger.nested("wait for all VMs to finish"):
            for machine in self.machines:
                machine.wait_for_shutdown()

    @contextlib.contextmanager
    def subtest(self, name: str) -> Iterator[None]:
        """Group the logs under a test name."""
        try:
            with self.logger.subtest(name):
                yield
        except BaseException as e:
            self.logger.log(f'Test "{name}" failed with error: "{e}"')
            raise

    def test_symbols(self) -> dict[str, Any]:
        class AssertionTester(unittest.TestCase):
            failureException = RequestedAssertionFailed

        symbols: dict[str, Any] = dict(
            start_all=self.start_all,
            join_all=self.join_all,
            machines=self.machines,
            machines_qemu=self.machines,
            log=self.logger,
            subtest=self.subtest,
            retry=retry,
            t=AssertionTester(),
            os=os,
        )
        symbols.update({re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", m.name): m
                        for m in self.machines})
        if len(self.machines) == 1:
            symbols["machine"] = self.machines[0]
        return symbols

    def run_script(self, path: Path) -> None:
        """Run a test script with the NixOS-like globals."""
        code = compile(path.read_text(), str(path), "exec")
        with self.logger.nested(f"run the VM test script {path}"):
            exec(code, self.test_symbols())
            for machine in self.machines:
                if machine.is_up():
                    machine.execute("sync")

    def release(self) -> None:
        """Kill every VM still running."""
        for machine in self.machines:
            machine.release()


def install_global_timeout(seconds: int) -> None:
    """Raise GlobalTimeout in the main thread after `seconds`."""

    def expired(_signum: int, _frame: Any) -> None:
        raise GlobalTimeout(f"the run exceeded its global timeout of {seconds} s")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)


def exit_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit and SIGINT into KeyboardInterrupt (even where
    it was inherited ignored), so `finally` blocks release the VMs."""

    def terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(f"stopped by {signal.Signals(signum).name}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def script_frames(exc: BaseException, script: Path) -> list[str]:
    """The traceback lines of an exception that lie in the test script."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(script)]
    return [f"  {script.name}:{f.lineno}: {f.line}" for f in frames]

