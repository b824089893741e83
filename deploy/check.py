#!/usr/bin/env python3
"""Offline checks of the Kubernetes example in deploy/, printed as TAP.

1. Every resource validates strictly (unknown fields are errors) against the Kubernetes
   OpenAPI schemas that the kubernetes-validate package ships, for the oldest and the
   newest Kubernetes version the example supports. A broken copy of the HPA must fail
   the same validation, so the validator is known to bite.
2. The example has the blueprint's shape and its numbers agree with each other and with
   the gateway binary: realtime-api + Service, notify-worker, NATS with JetStream,
   Redis, RabbitMQ; the HPA scales realtime-api 2..16 at 70% of ringcast_capacity_ratio;
   the adapter rule exports that metric name, which the running gateway's /metrics has;
   readiness on /readyz; the grace period covers preStop + --drain-seconds; Services
   select their pods' labels and ports; every flag the manifests pass exists in the
   binary's --help (flags still being built elsewhere are listed in PENDING and reported).

Usage: check.py RINGCAST_BINARY
"""

import copy
import glob
import os
import re
import subprocess
import sys
import urllib.request

import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
# Oldest version with the preStop `sleep` action in its schema, and the newest known.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# Flags and subcommands the manifests use that other issues are adding to the binary.
# A pending one that the binary now has is reported so it can be taken off this list.
PENDING: set[str] = set()
DRAIN_SLACK_SECONDS = 5

results = []


def check(name, fn):
    try:
        fn()
        results.append((True, name, None))
    except Exception as error:  # a failed check is reported, and the others still run
        results.append((False, name, f"{type(error).__name__}: {error}"))


def load_manifests():
    docs = {}
    for path in sorted(glob.glob(os.path.join(HERE, "*.yaml"))):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        with open(path) as f:
            docs[os.path.basename(path)] = [d for d in yaml.safe_load_all(f) if d]
    return docs


def find(docs, kind, name):
    for items in docs.values():
        for doc in items:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} named {name}")


def container(workload, name):
    for c in workload["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"{workload['metadata']['name']} has no container {name}")


def arg_value(args, flag):
    if flag not in args:
        raise AssertionError(f"{flag} missing from {args}")
    return args[args.index(flag) + 1]


def help_text(binary, *subcommand):
    out = subprocess.run([binary, *subcommand, "--help"], capture_output=True, text=True, timeout=30)
    return out.stdout + out.stderr, out.returncode


def gateway_metrics(binary):
    """Starts the real gateway on a free loopback port and returns its /metrics text."""
    process = subprocess.Popen([binary, "gateway", "--listen", "127.0.0.1:0", "--shards", "1", "--log", "warn"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        port = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert port, f"no listening line from the gateway: {line!r}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=10) as response:
            return response.read().decode()
    finally:
        process.kill()
        process.wait(timeout=10)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    docs = load_manifests()

    for file, items in docs.items():
        for doc in items:
            for version in KUBERNETES_VERSIONS:
                label = f"{file}: {doc['kind']}/{doc['metadata']['name']} is valid Kubernetes {version} (strict)"
                check(label, lambda doc=doc, version=version: kubernetes_validate.validate(doc, version, strict=True))

    def broken_copy_fails():
        broken = copy.deepcopy(find(docs, "HorizontalPodAutoscaler", "realtime-api"))
        broken["spec"]["minReplica"] = broken["spec"].pop("minReplicas")
        try:
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)
        except kubernetes_validate.ValidationError:
            return
        raise AssertionError("a misspelt field passed validation: the check is not checking")
    check("the validator rejects a misspelt field (negative control)", broken_copy_fails)

    def kustomization_lists_every_manifest():
        with open(os.path.join(HERE, "kustomization.yaml")) as f:
            listed = set(yaml.safe_load(f)["resources"])
        assert listed == set(docs), f"kustomization.yaml lists {sorted(listed)}, deploy/ has {sorted(docs)}"
    check("kustomization.yaml lists every manifest", kustomization_lists_every_manifest)

    def blueprint_shape():
        for kind, name in [("Deployment", "realtime-api"), ("Service", "realtime-api"), ("Deployment", "notify-worker"),
                           ("StatefulSet", "nats"), ("Deployment", "redis"), ("StatefulSet", "rabbitmq"),
                           ("HorizontalPodAutoscaler", "realtime-api")]:
            find(docs, kind, name)
        nats_args = container(find(docs, "StatefulSet", "nats"), "nats")["args"]
        assert "--jetstream" in nats_args, "NATS must run JetStream (history channels)"
        worker_args = container(find(docs, "Deployment", "notify-worker"), "worker")["args"]
        assert worker_args[0] == "worker", worker_args
        api_args = container(find(docs, "Deployment", "realtime-api"), "gateway")["args"]
        assert api_args[0] == "gateway"
        for flag in ("--nats", "--redis", "--amqp"):
            arg_value(api_args, flag)
    check("realtime-api, notify-worker, NATS (JetStream), Redis, RabbitMQ and the HPA are there", blueprint_shape)

    def hpa_rule():
        hpa = find(docs, "HorizontalPodAutoscaler", "realtime-api")["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "realtime-api"}, hpa["scaleTargetRef"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 16), (hpa["minReplicas"], hpa["maxReplicas"])
        [metric] = hpa["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "ringcast_capacity_ratio", metric
        assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "700m"}, metric["pods"]["target"]
    check("the HPA scales realtime-api 2..16 at 70% of ringcast_capacity_ratio", hpa_rule)

    metrics_text = {}

    def adapter_rule():
        config = yaml.safe_load(find(docs, "ConfigMap", "prometheus-adapter-ringcast")["data"]["config.yaml"])
        [rule] = [r for r in config["rules"] if r["name"]["as"] == "ringcast_capacity_ratio"]
        assert re.match(rule["name"]["matches"], "ringcast_capacity_ratio"), rule["name"]
        assert rule["seriesQuery"].startswith("ringcast_capacity_ratio{"), rule["seriesQuery"]
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}, "the HPA's Pods metric needs the pod label"
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        metrics_text["body"] = gateway_metrics(binary)
        samples = [line for line in metrics_text["body"].splitlines() if line.startswith("ringcast_capacity_ratio ")]
        assert len(samples) == 1, "the gateway must export exactly one ringcast_capacity_ratio sample"
        assert 0.0 <= float(samples[0].split()[1]) <= 1.0, samples
    check("the adapter rule exports ringcast_capacity_ratio, which the real gateway serves", adapter_rule)

    def probes_and_drain():
        api = find(docs, "Deployment", "realtime-api")
        gateway = container(api, "gateway")
        assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz", gateway["readinessProbe"]
        assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz", gateway["livenessProbe"]
        drain = int(arg_value(gateway["args"], "--drain-seconds"))
        pre_stop = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= pre_stop + drain + DRAIN_SLACK_SECONDS, \
            f"terminationGracePeriodSeconds {grace} < preStop {pre_stop} + drain {drain} + slack {DRAIN_SLACK_SECONDS}"
        strategy = api["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0, "roll out by surging, so drained clients have somewhere to go"
    check("readiness on /readyz; the grace period covers preStop + --drain-seconds", probes_and_drain)

    def services_select_their_pods():
        for items in docs.values():
            for service in (d for d in items if d["kind"] == "Service"):
                selector = service["spec"]["selector"]
                workloads = [d for i in docs.values() for d in i if d["kind"] in ("Deployment", "StatefulSet")
                             and d["metadata"]["namespace"] == service["metadata"]["namespace"]
                             and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
                assert len(workloads) == 1, f"Service {service['metadata']['name']} selects {len(workloads)} workloads"
                pod = workloads[0]["spec"]["template"]["spec"]
                named = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
                for port in service["spec"]["ports"]:
                    assert port["targetPort"] in named, f"Service {service['metadata']['name']} targets unknown port {port['targetPort']}"
    check("every Service selects exactly one workload and a port it declares", services_select_their_pods)

    landed = []

    def flags_exist():
        gateway_help, code = help_text(binary, "gateway")
        assert code == 0, gateway_help
        top_help, _ = help_text(binary)
        missing = []
        for workload, name in [("realtime-api", "gateway"), ("notify-worker", "worker")]:
            args = container(find(docs, "Deployment", workload), name)["args"]
            command = args[0]
            if command not in PENDING:
                assert re.search(rf"^\s+{command}\s", top_help, re.M), f"`ringcast {command}` is not a subcommand"
            elif re.search(rf"^\s+{command}\s", top_help, re.M):
                landed.append(command)
            text = gateway_help if command == "gateway" else help_text(binary, command)[0]
            for flag in (a for a in args if a.startswith("--")):
                present = re.search(rf"{re.escape(flag)}[ =\[<,]|{re.escape(flag)}$", text, re.M) is not None
                if flag in PENDING or command in PENDING:
                    if present and flag in PENDING:
                        landed.append(flag)
                elif not present:
                    missing.append(f"ringcast {command} {flag}")
        assert not missing, f"flags the manifests pass but the binary does not know: {missing}"
    check("every flag in the manifests exists in `ringcast ... --help` (or is PENDING)", flags_exist)

    print("TAP version 13")
    print(f"1..{len(results)}")
    for number, (ok, name, error) in enumerate(results, 1):
        print(f"{'ok' if ok else 'not ok'} {number} - {name}")
        if error:
            print(f"  # {error}")
    for item in sorted(set(landed)):
        print(f"# note: {item} is in the binary now: take it off PENDING in deploy/check.py")
    passed = sum(1 for ok, _, _ in results if ok)
    print(f"# pass {passed}")
    print(f"# fail {len(results) - passed}")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
