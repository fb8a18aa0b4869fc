# The xdt appliance under real systemd, written once against the NixOS test driver's API
# (start_all, subtest, machine.succeed / wait_for_unit / wait_until_succeeds, ...): the Debian
# harness (vm-tests/debian/run.py) and the NixOS VM test (vm-tests/nixos.nix) both run it.
#
# Nodes (alphabetical order gives NixOS's addresses 192.168.VLAN.N):
#   central (1): xdt-central.service and Prometheus (scraping it every 2 s, with the alert rules
#                the package ships); eth1 on vlan 2 (agents), eth2 on vlan 3 (the client)
#   client  (2): eth1 on vlan 1 (the node's service), eth2 on vlan 3 (the dashboard)
#   node    (3): xdt-attach@eth1 + xdt-agent@eth1 (probe and agent on vlan 1, facing the
#                client), xdt-service-health on 8081; eth2 on vlan 2 reaches central;
#                kernel.bpf_stats_enabled=1 (the probe's cost per packet)
# The node's rules (/etc/xdt/rules/eth1.rules; vm-tests/debian/nodes/node/rootfs/ for Debian):
# `counted` = UDP to 9999, `web` = TCP to 8081 steered through AF_XDP. Its agent runs with
# XDT_TEST_FAULTS=hang-on-sigusr2.
#
# Both drivers run each command under bash's `set -euo pipefail`: a `CMD | grep -q` pipeline fails
# with 141 when grep exits early and CMD then dies of SIGPIPE (a journal longer than the pipe
# buffer), so output is searched with `grep -q PATTERN < <(CMD)`, whose status is grep's alone.

import json
import shlex
import time

NODE = "192.168.1.3"  # the node's eth1, where the probe is attached
DASHBOARD = "http://192.168.3.1:8080"  # central, as the client reaches it
AGENT = "xdt-agent@eth1.service"
ATTACH = "xdt-attach@eth1.service"


def metrics():
    return json.loads(client.succeed(f"curl -sf --max-time 10 {DASHBOARD}/metrics.json"))


def agent_node():
    """The node's entry in central's /metrics.json, or None before its first batch."""
    for n in metrics()["nodes"]:
        if n["agent_id"].startswith("node/"):  # host/interface
            return n
    return None


def label_packets(entry, label):
    for c in (entry or {}).get("label_counts", []):
        if c["label"] == label:
            return c["packets"]
    return 0


def wait_for_central(what, predicate, timeout=120):
    """Polls central's view of the node until `predicate(entry)` holds."""
    deadline = time.monotonic() + timeout
    entry = None
    while time.monotonic() < deadline:
        entry = agent_node()
        if entry is not None and predicate(entry):
            return entry
        time.sleep(1)
    raise Exception(f"central never showed {what}; last view of the node: {json.dumps(entry)[:2000]}")


def probe_label(label):
    stats = json.loads(node.succeed("xdt stats --interface eth1 --json"))
    return next((c["packets"] for c in stats["labels"] if c["label"] == label), 0)


def send_udp(port, count):
    # One datagram per write; bash's /dev/udp needs nothing installed.
    client.succeed(
        f"for i in $(seq {count}); do printf x > /dev/udp/{NODE}/{port}; done"
    )


def unit_property(machine, unit, prop):
    return machine.succeed(f"systemctl show --value -p {prop} {unit}").strip()


def service_answers(times=10):
    for i in range(times):
        client.succeed(f"grep -q /echo/check{i} < <(curl -sf --max-time 5 http://{NODE}:8081/echo/check{i})")


PROMETHEUS = "http://localhost:9090"  # on central


def until(what, check, timeout=60, every=1):
    """Calls `check()` until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise Exception(f"{what}: not within {timeout} s")
        time.sleep(every)


def prometheus_queries(exprs):
    """Instant queries through Prometheus's HTTP API on central, in one round trip: each
    expression's result (a list of series; a failed query raises, naming it)."""
    script = "".join(
        f"curl -sS --max-time 10 -G {PROMETHEUS}/api/v1/query"
        f" --data-urlencode {shlex.quote('query=' + expr)}; echo\n"
        for expr in exprs
    )
    lines = central.succeed(script).splitlines()
    assert len(lines) == len(exprs), lines
    results = []
    for expr, line in zip(exprs, lines):
        answer = json.loads(line)
        assert answer.get("status") == "success", f"{expr}: {answer}"
        results.append(answer["data"]["result"])
    return results


def prometheus_api(path):
    answer = json.loads(central.succeed(f"curl -sS --max-time 10 {PROMETHEUS}/api/v1/{path}"))
    assert answer.get("status") == "success", f"{path}: {answer}"
    return answer["data"]


def prometheus_checks(agent_id, label):
    """Prometheus on central, set up as an operator would (Debian's package with its scrape job
    and the rules file the xdt package ships; NixOS's services.prometheus wired by the module):
    the job is up, every alert rule of the shipped file is loaded and evaluates, the first scrape
    after the traffic holds exactly what the probe counted for `label`, every panel query of both
    Grafana dashboards returns data, and no alert is pending or firing."""
    central.wait_for_unit("prometheus.service")
    central.wait_until_succeeds(f"curl -sf --max-time 5 {PROMETHEUS}/-/ready", timeout=300)
    share = central.succeed(
        "echo $(dirname $(dirname $(readlink -f $(command -v xdt-central))))/share/xdt"
    ).strip()

    def value(expr):
        (result,) = prometheus_queries([expr])
        return result[0]["value"][1] if result else None

    until("Prometheus scrapes central", lambda: value('up{job="xdt-central"}') == "1", 120)

    shipped = central.succeed(
        f"sed -n 's/^ *- alert: *//p' {share}/prometheus/xdt.rules.yml"
    ).split()
    assert len(shipped) >= 10, shipped

    def rules_evaluated():
        rules = [r for g in prometheus_api("rules")["groups"] for r in g["rules"]]
        assert sorted(r["name"] for r in rules) == sorted(shipped), (rules, shipped)
        return all(r["health"] == "ok" for r in rules)

    until(f"the {len(shipped)} alert rules evaluate", rules_evaluated, 60)

    # Exact counts: the probe's, then a scrape that began after them (Prometheus's sample
    # timestamps are central's clock, as is `date` there).
    stats = json.loads(node.succeed("xdt stats --interface eth1 --json"))
    probe = next(c for c in stats["labels"] if c["label"] == label)
    counted = float(central.succeed("date +%s.%N"))
    selector = f'{{agent_id="{agent_id}",interface="eth1",label="{label}"}}'
    metrics = {"xdp_label_packets_total": probe["packets"], "xdp_label_bytes_total": probe["bytes"]}

    def scraped_after():
        results = prometheus_queries([f"{m}{selector}[30s]" for m in metrics])
        newer = [[v for t, v in r[0]["values"] if float(t) > counted] if r else [] for r in results]
        return newer if all(newer) else None

    for (metric, expected), samples in zip(metrics.items(), until("a scrape after the traffic", scraped_after, 60)):
        assert samples == [str(expected)] * len(samples), (metric, expected, samples)
        log.info(f"Prometheus: {metric}{selector} = {samples[-1]} (the probe: {expected})")

    # Every panel query of the dashboards the package ships returns data. Rates and the probe's
    # cost per packet (the run time of an agent interval's packets, kept by the kernel only
    # with bpf_stats_enabled) need packets flowing: pings from the client meanwhile.
    node.succeed("test $(cat /proc/sys/kernel/bpf_stats_enabled) = 1")
    pinger = client.succeed(f"ping -q -i 0.2 -w 120 {NODE} > /dev/null 2>&1 & echo $!").strip()
    panels = []
    for board in ("xdt-overview.json", "xdt-agent.json"):
        dashboard = json.loads(central.succeed(f"cat {share}/grafana/{board}"))
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = (target["expr"].replace("$__rate_interval", "20s")
                        .replace("$agent", agent_id))
                assert "$" not in expr, expr
                panels.append((f"{board}: {panel['title']}", expr))
    assert len(panels) >= 50, panels
    answered = {}

    def every_panel_answers():
        pending = [p for p in panels if p not in answered]
        for panel, result in zip(pending, prometheus_queries([e for _, e in pending])):
            if result:
                answered[panel] = result
        return len(answered) == len(panels)

    try:
        until("every panel query returns data", every_panel_answers, 60, every=2)
    except Exception:
        raise Exception(f"panel queries without data: {[p for p in panels if p not in answered]}")
    finally:
        client.succeed(f"kill {pinger} 2> /dev/null || true")
    for (title, expr), result in ((p, answered[p]) for p in panels):
        log.info(f"{title}: {expr} = {[r['value'][1] for r in result][:4]}")

    alerts = prometheus_api("alerts")["alerts"]
    assert alerts == [], f"alerts on a healthy appliance: {alerts}"
    log.info(f"Prometheus: {len(shipped)} alert rules healthy and quiet, {len(panels)} panel queries answered")


def rules_file(lines):
    text = "\n".join(lines) + "\n"
    node.succeed(f"cat > /etc/xdt/rules/eth1.rules <<'EOF'\n{text}EOF")


start_all()

with subtest("the units start and say how they are"):
    central.wait_for_unit("xdt-central.service")
    node.wait_for_unit(ATTACH)
    node.wait_for_unit("xdt-service-health.service")
    node.wait_for_unit(AGENT)
    client.wait_for_unit("multi-user.target")
    node.wait_until_succeeds(
        f"grep -q 'central .* connected' < <(systemctl show -p StatusText {AGENT})", timeout=120
    )
    central.wait_until_succeeds(
        "grep -q '1 of 1 agents connected' < <(systemctl show -p StatusText xdt-central.service)",
        timeout=120,
    )

with subtest("the agent logs structured lines to the journal"):
    lines = node.succeed(f"journalctl -u {AGENT} -o json --no-pager").splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    ours = [r for r in records if r.get("SYSLOG_IDENTIFIER") == "xdt-agent"]
    assert ours, f"no xdt-agent records in the journal: {lines[:20]}"
    stray = [r for r in ours if r.get("IFACE") != "eth1" or r.get("AGENT_ID") != "node/eth1"]
    assert not stray, stray[:3]
    messages = [r.get("MESSAGE", "") for r in ours]
    assert "capabilities dropped" in messages, messages
    assert any(r.get("PEER") for r in ours), "no record names its peer (central)"

with subtest("the agent runs without capabilities"):
    pid = unit_property(node, AGENT, "MainPID")
    caps = node.succeed(f"grep -h -E '^Cap(Eff|Prm):' /proc/{pid}/task/*/status").split("\n")
    caps = [c for c in caps if c.strip()]
    assert len(caps) >= 4, caps  # main and steering threads, two lines each
    assert all(c.split()[1] == "0000000000000000" for c in caps), caps

with subtest("the dashboard is reachable from the client"):
    client.wait_for_open_port(8080, "192.168.3.1")
    page = client.succeed(f"curl -sf --max-time 10 {DASHBOARD}/")
    assert "<html" in page.lower(), page[:200]
    wait_for_central("the node connected", lambda n: n["connected"])

with subtest("client traffic is counted exactly"):
    client.succeed(f"ping -c 3 -W 5 {NODE}")  # neighbours resolved before counting
    before_probe = probe_label("counted")
    before_central = label_packets(agent_node(), "counted")
    assert before_probe == before_central == 0, (before_probe, before_central)
    send_udp(9999, 500)
    wait_for_central("500 counted packets", lambda n: label_packets(n, "counted") == 500)
    assert probe_label("counted") == 500
    time.sleep(3)  # nothing arrives late
    assert label_packets(agent_node(), "counted") == 500

with subtest("Prometheus holds the exact counts, and every panel and alert evaluates"):
    prometheus_checks("node/eth1", "counted")

with subtest("steered HTTP is inspected and answered"):
    service_answers()
    entry = wait_for_central(
        "steered requests",
        lambda n: (n["agent"].get("steering") or {}).get("received_packets", 0) > 0
        and any(
            ((e.get("inspection") or {}).get("http") or {}).get("path", "").startswith("/echo/check")
            for e in n["recent_events"]
        ),
    )
    steering = entry["agent"]["steering"]
    assert steering["rx_dropped"] == 0 and steering["reinject_dropped"] == 0, steering

with subtest("a killed agent is restarted and the service keeps answering"):
    restarts = int(unit_property(node, AGENT, "NRestarts"))
    old_pid = unit_property(node, AGENT, "MainPID")
    node.succeed(f"systemctl kill -s KILL {AGENT}")
    service_answers(20)
    node.wait_until_succeeds(
        f"test $(systemctl show --value -p NRestarts {AGENT}) -gt {restarts}", timeout=60
    )
    node.wait_for_unit(AGENT)
    assert unit_property(node, AGENT, "MainPID") != old_pid
    service_answers()

with subtest("a hung agent is restarted by the watchdog"):
    restarts = int(unit_property(node, AGENT, "NRestarts"))
    node.succeed(f"systemctl kill -s USR2 --kill-who=main {AGENT}")
    service_answers()  # steering's own thread still renews its lease; the kernel path takes over after
    node.wait_until_succeeds(
        f"grep -q 'Watchdog timeout' < <(journalctl -u {AGENT} --no-pager)", timeout=90
    )
    node.wait_until_succeeds(
        f"test $(systemctl show --value -p NRestarts {AGENT}) -gt {restarts}", timeout=60
    )
    node.wait_for_unit(AGENT)
    service_answers()

with subtest("reloading the attach unit applies new rules atomically"):
    original = node.succeed("cat /etc/xdt/rules/eth1.rules")
    rules_file(["counted proto udp dport 9999", "web proto tcp dport 8081 action steer",
                "reloaded proto udp dport 9998"])
    node.succeed(f"systemctl reload {ATTACH}")
    node.succeed("grep -q '^reloaded' < <(xdt rules list --interface eth1)")
    send_udp(9998, 100)
    wait_for_central("100 packets of the new label", lambda n: label_packets(n, "reloaded") == 100)
    node.wait_until_succeeds(f"grep -q 'reloaded' < <(journalctl -u {AGENT} --no-pager)", timeout=30)
    # A bad file is refused whole: the reload fails and the rules stay.
    rules_file(["counted proto udp dport 9999", "broken proto nonsense"])
    node.fail(f"systemctl reload {ATTACH}")
    node.succeed("grep -q '^reloaded' < <(xdt rules list --interface eth1)")
    rules_file(original.rstrip("\n").split("\n"))
    node.succeed(f"systemctl reload {ATTACH}")

with subtest("stopping the probe stops the agent and leaves the service up"):
    node.succeed(f"systemctl stop {ATTACH}")
    node.wait_until_succeeds(f"! systemctl is-active {AGENT}", timeout=60)
    # The pins are under the namespace's directory (/sys/fs/bpf/xdt/netns-N/eth1).
    node.fail("test -e /sys/fs/bpf/xdt/eth1 || compgen -G '/sys/fs/bpf/xdt/*/eth1'")
    node.fail("grep -q ': xdt[0-9]*a@' < <(ip -o link show)")  # ExecStopPost removed the re-entry pair
    node.succeed(f"grep -q 'stopped after' < <(journalctl -u {AGENT} --no-pager)")
    service_answers()

# The Debian package itself (vm-tests/debian/run.py --deb ... --upgrade-deb NEWER.deb sets
# XDT_VM_UPGRADE_DEB; NixOS installs no .deb, so there these subtests are skipped).
UPGRADE_DEB = os.environ.get("XDT_VM_UPGRADE_DEB")


def probe_status():
    (status,) = json.loads(node.succeed("xdt status --interface eth1 --json"))
    return status


if UPGRADE_DEB is None:
    log.info("XDT_VM_UPGRADE_DEB is not set: the Debian package subtests are skipped")
else:
    with subtest("the installed package starts nothing and wants a token"):
        # The client has the package but no configuration, as after a plain `apt install`.
        client.succeed("dpkg-query -W xdt")
        client.fail("test -e /etc/xdt/token")
        client.succeed("test -f /etc/xdt/agent.conf -a -f /etc/xdt/central.conf -a -f /etc/xdt/attach.env")
        client.succeed("grep -qx /etc/xdt/agent.conf < <(dpkg-query -W -f='${Conffiles}\\n' xdt | awk '{print $1}')")
        for unit in ("xdt-central.service", "xdt-service-health.service"):
            assert client.execute(f"systemctl is-enabled {unit}")[1].strip() == "disabled", unit
        active = client.succeed(
            "systemctl list-units --state=active --plain --no-legend"
            " 'xdt-attach@*' 'xdt-agent@*' xdt-central.service xdt-service-health.service"
        )
        assert active.strip() == "", active
        client.fail("test -e /sys/fs/bpf/xdt")
        client.fail("systemctl start xdt-central.service")
        # The daemon refuses and says which file is missing and what to do, in the journal and
        # in `systemctl status` (systemd 252 names no file when a credential cannot be loaded).
        missing = "no token: /etc/xdt/token does not exist. Write the token"
        client.succeed(f"grep -qF '{missing}' < <(journalctl -u xdt-central.service --no-pager)")
        status = client.execute("systemctl status --full --no-pager --lines=10 xdt-central.service")[1]
        log.info(f"systemctl status without the token:\n{status}")
        assert missing in status, status
        # Refused once, not restarted: nothing changes until the operator writes the file.
        assert unit_property(client, "xdt-central.service", "ExecMainStatus") == "78"
        assert unit_property(client, "xdt-central.service", "NRestarts") == "0"
        client.succeed("install -m 0600 /dev/null /etc/xdt/token && echo client-token > /etc/xdt/token")
        client.succeed("systemctl start xdt-central.service")
        client.succeed("systemctl stop xdt-central.service && rm /etc/xdt/token")

    with subtest("installing a newer package restarts the daemons and keeps the probe attached"):
        node.succeed(f"systemctl start {ATTACH} {AGENT}")
        node.wait_for_unit(AGENT)
        wait_for_central("the node connected again", lambda n: n["connected"])
        old_version = node.succeed("dpkg-query -W -f='${Version}' xdt")
        old_agent = unit_property(node, AGENT, "MainPID")
        old_central = unit_property(central, "xdt-central.service", "MainPID")
        old_health = unit_property(node, "xdt-service-health.service", "MainPID")
        attached = unit_property(node, ATTACH, "ActiveEnterTimestampMonotonic")
        before = probe_status()
        counted = probe_label("counted")
        deb = os.path.basename(UPGRADE_DEB)
        for machine in (node, central):
            machine.copy_from_host(UPGRADE_DEB, f"/tmp/{deb}")
            machine.succeed(f"cd /tmp && apt-get install --yes ./{deb}", timeout=300)
        new_version = node.succeed("dpkg-query -W -f='${Version}' xdt")
        assert new_version != old_version, (old_version, new_version)
        node.wait_for_unit(AGENT)
        central.wait_for_unit("xdt-central.service")
        assert unit_property(node, AGENT, "MainPID") != old_agent
        assert unit_property(central, "xdt-central.service", "MainPID") != old_central
        assert unit_property(node, "xdt-service-health.service", "MainPID") != old_health
        # The attach unit was not restarted: the same program on the same link, counters kept.
        assert unit_property(node, ATTACH, "ActiveEnterTimestampMonotonic") == attached
        after = probe_status()
        assert (after["program_id"], after["link_id"]) == (before["program_id"], before["link_id"]), (before, after)
        assert probe_label("counted") == counted
        at_central = label_packets(wait_for_central("the node connected after the upgrade", lambda n: n["connected"]), "counted")
        send_udp(9999, 200)
        wait_for_central("200 more counted packets", lambda n: label_packets(n, "counted") == at_central + 200)
        assert probe_label("counted") == counted + 200
        service_answers()
