#!/usr/bin/env python3
"""The pod the DaemonSet of docs/kubernetes/agent.yaml puts on one node, for `podman kube play`.

podman 4.3 plays Pods, Deployments, ConfigMaps, Secrets and PersistentVolumeClaims but skips
DaemonSets, so this writes the DaemonSet's pod template as the Pod its controller would create
(name and labels from the template, spec unchanged), together with the agent's ConfigMap with
the site's three values set as an operator would: the interface, central's address and the rules.
podman 4.3 also ignores securityContext.seccompProfile and reads the older annotation instead,
so the pod's profile is written there too (a Localhost profile as `localhost/FILE`, which podman
finds under `kube play --seccomp-profile-root`, as the kubelet does under its seccomp directory);
and it applies the pod's restart policy to init
containers as well, restarting an init container that succeeded (which Kubernetes never does),
so the pod gets OnFailure: failed containers are still restarted.

    node_pod.py AGENT_YAML NODE_NAME INTERFACE CENTRAL RULES_FILE > pod.yaml

podman 4.3 does not run preStop hooks either; the test runs them as the kubelet would, from

    node_pod.py --pre-stop AGENT_YAML > hooks.json   ({"container": [argv...]})
"""

import json

import sys

import yaml


def pre_stop(source: str) -> None:
    with open(source) as f:
        (daemonset,) = [d for d in yaml.safe_load_all(f) if d and d["kind"] == "DaemonSet"]
    hooks = {
        c["name"]: c["lifecycle"]["preStop"]["exec"]["command"]
        for c in daemonset["spec"]["template"]["spec"]["containers"]
        if "preStop" in (c.get("lifecycle") or {})
    }
    json.dump(hooks, sys.stdout)


def main() -> None:
    if sys.argv[1] == "--pre-stop":
        pre_stop(sys.argv[2])
        return
    source, node, interface, central, rules = sys.argv[1:6]
    with open(source) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (daemonset,) = [d for d in docs if d["kind"] == "DaemonSet"]
    config["data"]["interface"] = interface
    lines = config["data"]["agent.conf"].splitlines()
    assert any(line.startswith("XDT_CENTRAL=") for line in lines), lines
    config["data"]["agent.conf"] = "".join(
        (f"XDT_CENTRAL={central}" if line.startswith("XDT_CENTRAL=") else line) + "\n"
        for line in lines
    )
    with open(rules) as f:
        config["data"]["node.rules"] = f.read()
    template = daemonset["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{daemonset['metadata']['name']}-{node}",
            "namespace": daemonset["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
        },
        "spec": dict(template["spec"], nodeName=node, restartPolicy="OnFailure"),
    }
    profile = (template["spec"].get("securityContext") or {}).get("seccompProfile") or {}
    annotation = {
        "Unconfined": lambda: "unconfined",
        "RuntimeDefault": lambda: "runtime/default",
        "Localhost": lambda: f"localhost/{profile['localhostProfile']}",
    }.get(profile.get("type"))
    if annotation is not None:
        pod["metadata"]["annotations"] = {"seccomp.security.alpha.kubernetes.io/pod": annotation()}
    yaml.safe_dump_all([config, pod], sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
