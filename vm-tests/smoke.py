# Smoke test of the VM test harness (vm-tests/debian/run.py --scenario vm-tests/smoke.py):
# the three nodes boot, the NixOS-like Machine API behaves as the NixOS driver's does, the
# vlans join exactly the nodes they should, and no guest can reach anything else.
# Topology: vlan 1 client <-> node, vlan 2 node <-> central, vlan 3 client <-> central;
# central = 1, client = 2, node = 3, so a node's address on vlan V is 192.168.V.<its number>.
import hashlib
import tempfile

start_all()

with subtest("every node boots to multi-user.target"):
    for m in machines:
        m.wait_for_unit("multi-user.target")

with subtest("commands: status, stdout, stderr, set -euo pipefail, timeouts"):
    for m in machines:
        m.log("kernel " + m.succeed("uname -r").strip())
    node.fail("false")
    t.assertEqual(node.execute("echo out; echo err >&2; exit 3"), (3, "out\n"))
    t.assertEqual(node.succeed("echo a", "echo b"), "a\nb\n")
    node.fail("false | true")  # pipefail
    node.fail("echo $NOT_SET")  # nounset
    t.assertEqual(node.execute("sleep 60", timeout=2)[0], 124)
    t.assertEqual(node.execute("exit 5", check_return=False), (-1, ""))

with subtest("output round-trips: NUL, CR, UTF-8, no trailing newline, 1 MiB"):
    t.assertEqual(node.succeed(r"printf 'a\0b\r\nc\xc3\xa9\x01'"), "a\0b\r\nc\u00e9\x01")
    t.assertEqual(node.succeed("head -c 1048576 /dev/zero | tr '\\0' x"), "x" * 1048576)
    t.assertEqual(node.succeed("printf ''"), "")

with subtest("copy_from_host: every byte value"):
    payload = bytes(range(256)) * 64
    with tempfile.NamedTemporaryFile() as f:
        f.write(payload)
        f.flush()
        node.copy_from_host(f.name, "/tmp/smoke/payload")
    t.assertEqual(
        node.succeed("sha256sum </tmp/smoke/payload").split()[0],
        hashlib.sha256(payload).hexdigest(),
    )

with subtest("wait_until_succeeds / wait_until_fails, with timeouts"):
    node.succeed("rm -f /tmp/flag; (sleep 3; touch /tmp/flag) >/dev/null 2>&1 &")
    node.wait_until_succeeds("test -e /tmp/flag", timeout=30)
    node.succeed("(sleep 3; rm /tmp/flag) >/dev/null 2>&1 &")
    node.wait_until_fails("test -e /tmp/flag", timeout=30)
    try:
        node.wait_until_succeeds("false", timeout=3)
    except Exception as e:
        t.assertIn("timed out", str(e))
    else:
        raise Exception("wait_until_succeeds('false') did not time out")

with subtest("systemd: systemctl, units, ports"):
    t.assertEqual(central.systemctl("is-active multi-user.target"), (0, "active\n"))
    central.succeed("systemd-run --unit=smoke-listen nc -lk 7777")
    central.wait_for_unit("smoke-listen.service")
    info = central.get_unit_info("smoke-listen.service")
    t.assertEqual(info["ActiveState"], "active")
    t.assertEqual(central.get_unit_property("smoke-listen.service", "SubState"), "running")
    central.wait_for_open_port(7777)
    client.succeed("nc -z -w 5 192.168.3.1 7777")  # TCP across vlan 3
    central.systemctl("stop smoke-listen.service")
    central.wait_for_closed_port(7777)
    central.succeed("systemd-run --unit=smoke-fails false")
    try:
        central.wait_for_unit("smoke-fails.service", timeout=30)
    except Exception as e:
        t.assertIn('reached state "failed"', str(e))
    else:
        raise Exception("wait_for_unit on a failed unit did not raise")

with subtest("serial console"):
    central.succeed("echo smoke-console-marker >/dev/console")
    central.wait_for_console_text("smoke-console-marker", timeout=30)

with subtest("guest kernel: bpffs mounted, version >= 5.19"):
    for m in machines:
        m.succeed("mount | grep -q 'bpf on /sys/fs/bpf type bpf'")
        major, minor = m.succeed("uname -r").split(".")[:2]
        t.assertGreaterEqual((int(major), int(minor)), (5, 19))

with subtest("vlans: each joins exactly its two nodes"):
    t.assertEqual(client.succeed("cat /sys/class/net/eth1/address").strip(), "52:54:00:12:01:02")
    t.assertEqual(central.succeed("cat /sys/class/net/eth2/address").strip(), "52:54:00:12:03:01")
    for m, peer in [
        (client, "192.168.1.3"), (node, "192.168.1.2"),
        (node, "192.168.2.1"), (central, "192.168.2.3"),
        (client, "192.168.3.1"), (central, "192.168.3.2"),
    ]:
        m.wait_until_succeeds(f"ping -c1 -W2 {peer}", timeout=60)
    client.wait_until_succeeds("ping -c1 -W2 2001:db8:1::3", timeout=60)
    client.succeed("ping -c1 -W2 node")  # /etc/hosts: a node's first vlan address
    node.fail("ping -c1 -W1 192.168.3.1")  # node is not on vlan 3
    client.fail("ping -c1 -W1 192.168.2.1")  # client is not on vlan 2

with subtest("no route to the host or the internet"):
    for m in machines:
        t.assertEqual(m.succeed("ip route show default; ip -6 route show default"), "")
        m.fail("ip route get 1.1.1.1")
        m.fail("ping -c1 -W1 1.1.1.1")
        t.assertEqual(m.succeed("ip -o addr show dev eth0 scope global"), "")  # unconnected

with subtest("crash and restart a node"):
    client.crash()
    client.start()
    client.wait_for_unit("multi-user.target")
    client.wait_until_succeeds("ping -c1 -W2 192.168.1.3", timeout=60)

with subtest("shutdown"):
    for m in machines:
        m.shutdown()
