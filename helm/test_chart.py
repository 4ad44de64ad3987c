"""Chart tests without a Kubernetes control plane (see helm/test-chart.sh).

render: lint; the schema and the templates' checks on good and bad values; every rendered
        manifest validated against the Kubernetes schemas (kubernetes-validate, offline); the
        chart's invariants (Parallel pods, not-ready peers published, PDB arithmetic, probes,
        retained volumes, DNS names not IPs, NetworkPolicy on by default).
run:    the rendered StatefulSet's container (command, args, env incl. the ConfigMap, mounts)
        and the bootstrap Job, run as containers of the image on one Docker network with the
        headless Service's DNS names as aliases; the cluster must form, unseal and serve a key.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import re

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parent / "gatekeeper"
K8S = "1.31.0"
NS = "keys"
RELEASE = "gk"
OPERATOR = {"operator": {"secretName": "gk-operator"}}
CRDS = {"Certificate", "ServiceMonitor", "PrometheusRule"}


def merge(*dicts):
    out = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


VALUE_SETS = {
    "default": OPERATOR,
    "five-nodes-cert-manager-monitoring": merge(OPERATOR, {
        "replicas": 5,
        "threshold": 3,
        "settings": {"max_snapshot_bytes": 536870912, "election_timeout_min_ms": 1500,
                     "election_timeout_max_ms": 3000},
        "tls": {"mode": "certManager"},
        "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                       "grafanaDashboard": {"enabled": True}},
        "affinity": {"zoneSpread": True},
        "apiService": {"type": "LoadBalancer"},
    }),
    "production-threshold-4-of-5": merge(OPERATOR, {
        "replicas": 5,
        "threshold": 4,
        "mode": "production",
        "tls": {"operatorCaSecret": "gk-operator-ca", "operatorNames": ["alice", "bob"]},
        "settings": {"member_attestation": "dcap", "worker_attestation": "dcap",
                     "enclave": "gramine-sgx", "chain_url": "wss://rpc.example:443",
                     "chain_profile": "phala"},
        "networkPolicy": {"enabled": False},
        "persistence": {"storageClass": "fast", "size": "50Gi"},
    }),
}

# Each bad value set, and a phrase of the refusal it must get.
BAD_VALUES = {
    "even replicas": (merge(OPERATOR, {"replicas": 4}), "/replicas"),
    "one replica": (merge(OPERATOR, {"replicas": 1}), "/replicas"),
    "threshold above replicas": (merge(OPERATOR, {"threshold": 5}), "threshold 5 is above replicas 3"),
    "threshold 0": (merge(OPERATOR, {"threshold": 0}), "/threshold"),
    "unknown top-level key": (merge(OPERATOR, {"replicaCount": 3}), "replicaCount"),
    "unknown setting": (merge(OPERATOR, {"settings": {"fault_hooks": True}}), "fault_hooks"),
    "unknown tls mode": (merge(OPERATOR, {"tls": {"mode": "selfSigned"}}), "/tls/mode"),
    "no operator secret": ({}, "operator.secretName is required"),
    "production without a separate operator CA": (merge(OPERATOR, {"mode": "production"}), "separate operator CA"),
    "grace period shorter than the drain": (merge(OPERATOR, {"preStopSleepSeconds": 30}), "terminationGracePeriodSeconds"),
    "two listeners on one port": (merge(OPERATOR, {"ports": {"api": 7101}}), "must differ"),
    "election timeouts reversed": (merge(OPERATOR, {"settings": {"election_timeout_min_ms": 3000}}), "election_timeout_min_ms"),
    "pod labels overriding the selector": (merge(OPERATOR, {"podLabels": {"app.kubernetes.io/component": "x"}}), "podLabels"),
}


def render(values):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        out = chart.render(values, name=RELEASE, namespace=NS, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs, out.get("gatekeeper/templates/NOTES.txt", "")


def by_kind(docs, kind, name_suffix=""):
    return [d for _, d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]


def check_invariants(name, values, docs):
    n = values.get("replicas", 3)
    t = values.get("threshold", 2)
    sts = by_kind(docs, "StatefulSet")[0]
    spec = sts["spec"]
    assert spec["podManagementPolicy"] == "Parallel", name
    assert spec["replicas"] == n, name
    assert spec["updateStrategy"]["type"] == "RollingUpdate", name
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}, name
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez", name
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz?uninitialized=ok", name
    assert c["startupProbe"]["httpGet"]["path"] == "/livez", name
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "/bin/sleep", name
    assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
    assert pod["securityContext"]["runAsNonRoot"] is True, name
    assert "checksum/config" in spec["template"]["metadata"]["annotations"], name
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"], name
    env = {e["name"]: e.get("value") for e in c["env"]}
    for k in ("GATEKEEPER_RAFT_ADVERTISE", "GATEKEEPER_API_ADVERTISE"):
        assert env[k].startswith("$(POD_NAME).gk-gatekeeper-peers.keys.svc.cluster.local:"), (name, env[k])
    sources = pod["volumes"][0]["projected"]["sources"]
    assert len(sources) == n, name
    headless = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"][0]
    assert headless["spec"]["publishNotReadyAddresses"] is True, name
    pdb = by_kind(docs, "PodDisruptionBudget")[0]
    assert pdb["spec"]["maxUnavailable"] == min((n - 1) // 2, n - t), (name, pdb["spec"])
    nps = by_kind(docs, "NetworkPolicy")
    assert bool(nps) == values.get("networkPolicy", {}).get("enabled", True), name
    jobs = {j["metadata"]["annotations"]["helm.sh/hook"]: j for j in by_kind(docs, "Job")}
    assert set(jobs) == {"post-install,post-upgrade", "pre-upgrade,pre-rollback",
                         "post-upgrade,post-rollback"}, (name, set(jobs))
    init = jobs["post-install,post-upgrade"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    # Nothing but the node pods carries the selector (Jobs and the test pod would otherwise be
    # counted by the PDB, repelled by the anti-affinity, admitted to the cluster port).
    selector = spec["selector"]["matchLabels"]
    assert selector.get("app.kubernetes.io/component") == "node", name
    for _, d in docs:
        if d["kind"] in ("Job", "Pod"):
            labels = (d["spec"]["template"]["metadata"] if d["kind"] == "Job" else d["metadata"])["labels"]
            assert not all(labels.get(k) == v for k, v in selector.items()), (name, d["metadata"]["name"])
            psc = (d["spec"]["template"]["spec"] if d["kind"] == "Job" else d["spec"])["securityContext"]
            assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
    cm = [c for c in by_kind(docs, "ConfigMap") if "GATEKEEPER_DATA_DIR" in c["data"]][0]["data"]
    assert cm["GATEKEEPER_DATA_DIR"] == "/data/node", name
    for k, v in values.get("settings", {}).items():
        assert cm[f"GATEKEEPER_{k.upper()}"] == str(v), (name, k, cm[f"GATEKEEPER_{k.upper()}"])
    if values.get("monitoring", {}).get("serviceMonitor", {}).get("enabled"):
        sm = by_kind(docs, "ServiceMonitor")[0]["spec"]["selector"]["matchLabels"]
        peers = [s for s in by_kind(docs, "Service") if all(s["metadata"]["labels"].get(k) == v for k, v in sm.items())]
        assert [p["spec"].get("clusterIP") for p in peers] == ["None"], (name, "ServiceMonitor selects the headless Service only")
    assert init.count("--member ") == n and f"--threshold {t}" in init, name
    certs = by_kind(docs, "Certificate")
    if values.get("tls", {}).get("mode") == "certManager":
        assert [x["spec"]["commonName"] for x in certs] == [f"node-{i}" for i in range(1, n + 1)], name
        assert all("gk-gatekeeper-%d.gk-gatekeeper-peers.keys.svc.cluster.local" % (i) in x["spec"]["dnsNames"]
                   for i, x in enumerate(certs)), name
    else:
        assert not certs, name


PROMTOOL = os.environ.get("PROMTOOL", str(CHART.parent.parent / "target/promtool/promtool"))
ALERT_TESTS = CHART.parent / "alerts-test.yaml"


def monitoring_exprs(docs):
    """The PromQL of the rendered alerts and of the dashboard's panels (Grafana's variables
    replaced by values PromQL accepts)."""
    rules = [r for d in by_kind(docs, "PrometheusRule") for g in d["spec"]["groups"] for r in g["rules"]]
    panels = []
    for cm in by_kind(docs, "ConfigMap", "-dashboard"):
        dash = json.loads(cm["data"]["gatekeeper.json"])
        for p in dash["panels"]:
            for t in p.get("targets", []):
                e = t["expr"].replace("$__rate_interval", "5m").replace("$namespace", NS)
                panels.append((p["title"], e.replace("$service", f"{RELEASE}-gatekeeper-peers")))
    return rules, panels


def series_family(name):
    """A sample name with a histogram's suffix folded away."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


def metric_names(exprs):
    """Gatekeeper metrics named in PromQL expressions (see `series_family`)."""
    return {series_family(m) for e in exprs for m in re.findall(r"\b(gatekeeper_[a-z_]+)", e)}


def check_monitoring(docs):
    """promtool checks the alerts' and the dashboard's PromQL and runs the alerts' unit tests;
    every alert has a test. Returns the metric names they use."""
    rules, panels = monitoring_exprs(docs)
    assert rules and panels, "the monitoring value set renders rules and a dashboard"
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rule_doc = by_kind(docs, "PrometheusRule")[0]
        (d / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_doc["spec"]["groups"]}))
        shutil.copy(ALERT_TESTS, d / "alerts-test.yaml")
        # The dashboard's queries, as recording rules: promtool parses every one.
        (d / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:panel_{i}", "expr": e} for i, (_, e) in enumerate(panels)]}]}))
        out = sh(PROMTOOL, "check", "rules", str(d / "rules.yaml"), str(d / "dashboard.yaml"), check=False)
        assert out.returncode == 0, f"promtool check rules:\n{out.stdout}{out.stderr}"
        out = sh(PROMTOOL, "test", "rules", str(d / "alerts-test.yaml"), check=False)
        assert out.returncode == 0, f"promtool test rules:\n{out.stdout}{out.stderr}"
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    alerts = {r["alert"] for r in rules}
    assert alerts <= tested, f"alerts without a test in {ALERT_TESTS.name}: {sorted(alerts - tested)}"
    print(f"monitoring: {len(alerts)} alerts pass their promtool tests; {len(panels)} dashboard queries parse")
    return metric_names([r["expr"] for r in rules] + [e for _, e in panels])


def test_render():
    lint = helm.lint(str(CHART), OPERATOR, strict=True, namespace=NS, kube_version=K8S)
    problems = lint.get("errors", []) + [m for m in lint.get("messages", []) if m.get("severity", 0) >= 1]
    assert not problems, f"helm lint: {problems}"
    print("lint: clean (strict)")
    for name, values in VALUE_SETS.items():
        docs, notes = render(values)
        kinds = {}
        for path, doc in docs:
            kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
            if doc["kind"] in CRDS:
                assert doc["apiVersion"] in ("cert-manager.io/v1", "monitoring.coreos.com/v1"), doc["apiVersion"]
                continue
            try:
                kubernetes_validate.validate(doc, K8S, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{name}: {path}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")
        check_invariants(name, values, docs)
        if by_kind(docs, "PrometheusRule"):
            check_monitoring(docs)
        assert "helm test" in notes, name
        print(f"render {name}: {len(docs)} manifests valid for Kubernetes {K8S} ({json.dumps(kinds, sort_keys=True)})")
    for name, (values, phrase) in BAD_VALUES.items():
        try:
            render(values)
        except Exception as e:  # the schema's or a template's refusal
            text = " ".join(str(e).split())
            assert phrase in text, f"{name}: refused for another reason: {text}"
            print(f"refused {name}: {text[:150]}")
            continue
        raise AssertionError(f"bad values accepted: {name}")


# --- run what the chart renders ---------------------------------------------------------------

def sh(*args, check=True, capture=True, timeout=120):
    r = subprocess.run(args, capture_output=capture, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def expand(value, env):
    for k, v in env.items():
        value = value.replace(f"$({k})", v)
    return value


def container_env(c, configmaps, pod_name):
    env = {}
    for src in c.get("envFrom", []):
        env.update(configmaps[src["configMapRef"]["name"]])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod_name
        else:
            raise AssertionError(f"unsupported env source {e}")
    return env


def check_scraped_metrics(n, containers, port):
    """Every metric the alerts and the dashboard use is exported by the running pods (the leader
    exports the leader-only ones); the chain's, which need a chain, are in the documented list."""
    docs, _ = render(VALUE_SETS["five-nodes-cert-manager-monitoring"])
    rules, panels = monitoring_exprs(docs)
    used = metric_names([r["expr"] for r in rules] + [e for _, e in panels])
    scraped = set()
    for name in containers:
        ip = sh("docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                name).stdout.strip()
        with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        scraped |= {series_family(re.split(r"[{ ]", l, 1)[0]) for l in text.splitlines()
                    if l and not l.startswith("#")}
    documented = (CHART.parent.parent / "docs/operations.md").read_text()
    # The chain's row of the Metrics table lists its metrics' names without the prefix.
    missing = {m for m in used - scraped
               if not (m.startswith("gatekeeper_chain_") and f"`{m.removeprefix('gatekeeper_chain_')}`" in documented)}
    assert not missing, f"alerts or dashboard use metrics no pod exports: {sorted(missing)}"
    print(f"run: the {len(used)} metrics the alerts and dashboard use are exported by the pods "
          f"({len(used - scraped)} chain metrics need a chain)")


def test_run(image):
    docs, _ = render(merge(OPERATOR, {"image": {"repository": image.split(":")[0], "tag": image.split(":")[1]}}))
    configmaps = {d["metadata"]["name"]: d["data"] for d in by_kind(docs, "ConfigMap")}
    sts = by_kind(docs, "StatefulSet")[0]
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    headless = sts["spec"]["serviceName"]
    job = [j for j in by_kind(docs, "Job") if j["metadata"]["annotations"]["helm.sh/hook"].startswith("post-install")][0]
    jc = job["spec"]["template"]["spec"]["containers"][0]
    n = sts["spec"]["replicas"]
    net = f"gkchart{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="gkchart-"))
    names = []
    try:
        sh("docker", "network", "create", net)
        # The Secrets, shaped as the chart mounts them: node-<i>/{tls.crt,tls.key,ca.crt} and the
        # operator's, made with `gatekeeper certs` from the image.
        certs = work / "certs"
        certs.mkdir(mode=0o777)
        os.chmod(certs, 0o777)
        script = ["set -e", "gatekeeper certs ca --out /w/ca"]
        for i in range(1, n + 1):
            host = f"{sts['metadata']['name']}-{i - 1}.{headless}.{NS}.svc.cluster.local"
            script.append(f"gatekeeper certs node --ca /w/ca --name node-{i} --host {host} --out /w/node-{i}")
        script.append("gatekeeper certs operator --ca /w/ca --name operator --out /w/operator")
        sh("docker", "run", "--rm", "-v", f"{certs}:/w", "--entrypoint", "/bin/sh", image, "-c", "\n".join(script))
        tls = work / "tls"
        operator = work / "operator"
        for i in range(1, n + 1):
            d = tls / f"node-{i}"
            d.mkdir(parents=True)
            shutil.copy(certs / f"node-{i}" / f"node-{i}.pem", d / "tls.crt")
            shutil.copy(certs / f"node-{i}" / f"node-{i}.key", d / "tls.key")
            shutil.copy(certs / "ca" / "ca.pem", d / "ca.crt")
        operator.mkdir()
        shutil.copy(certs / "operator" / "operator.pem", operator / "tls.crt")
        shutil.copy(certs / "operator" / "operator.key", operator / "tls.key")
        shutil.copy(certs / "ca" / "ca.pem", operator / "ca.crt")
        for p in [tls, operator, *tls.rglob("*"), *operator.rglob("*")]:
            os.chown(p, 0, 10001)  # fsGroup 10001, Secret defaultMode 0440
            os.chmod(p, 0o750 if p.is_dir() else 0o440)

        def run(name, spec, pod_name, mounts):
            env = container_env(spec, configmaps, pod_name)
            args = ["docker", "run", "-d", "--name", name, "--hostname", pod_name, "--network", net,
                    "--read-only", "--user", "10001:10001"]
            if pod_name.startswith(sts["metadata"]["name"] + "-"):
                args += ["--network-alias", f"{pod_name}.{headless}.{NS}.svc.cluster.local"]
            for k, v in env.items():
                args += ["-e", f"{k}={v}"]
            for m in spec.get("volumeMounts", []):
                src = mounts[m["name"]]
                args += ["--mount", f"type={'tmpfs' if src is None else 'bind'},dst={m['mountPath']}"
                         + ("" if src is None else f",src={src}") + (",readonly" if m.get("readOnly") else "")]
            args += ["--entrypoint", spec["command"][0], image, *spec["command"][1:], *spec.get("args", [])]
            sh(*args)
            names.append(name)

        for i in range(n):
            pod_name = f"{sts['metadata']['name']}-{i}"
            data = work / f"data-{i}"
            data.mkdir()
            os.chown(data, 10001, 10001)
            os.chmod(data, 0o700)
            run(f"{net}-{pod_name}", c, pod_name, {"data": data, "tls": tls})
        run(f"{net}-bootstrap", jc, "bootstrap", {"operator": operator})
        start = time.time()
        while True:
            st = sh("docker", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", f"{net}-bootstrap").stdout.split()
            if st[0] == "exited":
                logs = sh("docker", "logs", f"{net}-bootstrap").stdout
                assert st[1] == "0", f"the bootstrap Job failed:\n{logs}"
                break
            assert time.time() - start < 300, "the bootstrap Job did not finish"
            time.sleep(2)
        print(f"run: the bootstrap Job initialised the cluster and saw every node ready in {time.time() - start:.0f} s")
        # A worker registered (development event) and its key fetched over TLS from each pod.
        first = f"{sts['metadata']['name']}-0.{headless}.{NS}.svc.cluster.local"
        tool = ["docker", "run", "--rm", "--network", net, "--user", "10001:10001",
                "-v", f"{operator}:/operator:ro", "-v", f"{work}:/w",
                "-e", "GATEKEEPER_ADMIN_CA=/operator/ca.crt", "-e", "GATEKEEPER_ADMIN_CERT=/operator/tls.crt",
                "-e", "GATEKEEPER_ADMIN_KEY=/operator/tls.key", "--entrypoint", "/bin/sh", image, "-c"]
        os.chmod(work, 0o777)
        out = sh(*tool, "set -e; w=$(gatekeeper keygen --out /w/worker.json); "
                 f"gatekeeper admin --endpoint {first}:8102 dev register-worker --worker $w >/dev/null; "
                 "sleep 1; for i in " + " ".join(str(i) for i in range(n)) + "; do "
                 f"gatekeeper miner fetch-key --endpoint {sts['metadata']['name']}-$i.{headless}.{NS}.svc.cluster.local:8101 "
                 "--worker-key-file /w/worker.json --ca /operator/ca.crt --kind worker; done").stdout
        keys = {json.loads(l)["public_key"] for l in out.splitlines() if l.startswith("{")}
        assert len(keys) == 1 and len(out.splitlines()) == n, out
        key = keys.pop()
        print(f"run: every node served the same worker key {key[:16]}… over TLS")
        # A pod restarted (the kubelet re-running the same container): it unseals from its peers
        # and serves the same key. Its volume root is given the kubelet's fsGroup treatment first
        # (group 10001, group-writable, setgid) — the node's own tree below it must not care.
        restarted = f"{net}-{sts['metadata']['name']}-1"
        sh("docker", "stop", "-t", "20", restarted)
        data = work / "data-1"
        os.chown(data, 10001, 10001)
        os.chmod(data, 0o2770)
        sh("docker", "start", restarted)
        host1 = f"{sts['metadata']['name']}-1.{headless}.{NS}.svc.cluster.local"
        out = sh(*tool, f"for i in $(seq 1 90); do gatekeeper health --http {host1}:9102 >/dev/null 2>&1 && break; sleep 1; done; "
                 f"gatekeeper miner fetch-key --endpoint {host1}:8101 --worker-key-file /w/worker.json "
                 "--ca /operator/ca.crt --kind worker", timeout=180).stdout
        assert json.loads(out.strip().splitlines()[-1])["public_key"] == key, out
        print("run: a restarted pod unsealed from its peers and served the same key")
        check_scraped_metrics(n, [f"{net}-{sts['metadata']['name']}-{i}" for i in range(n)],
                              int(c["ports"][[p["name"] for p in c["ports"]].index("metrics")]["containerPort"]))
    finally:
        for name in names:
            sh("docker", "rm", "-f", name, check=False)
        sh("docker", "network", "rm", net, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    t = time.time()
    if what in ("render", "all"):
        test_render()
    if what in ("run", "all"):
        test_run(os.environ.get("GATEKEEPER_IMAGE", "gatekeeper:compose-test"))
    print(f"chart tests passed in {time.time() - t:.0f} s")
