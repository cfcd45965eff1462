"""Validates helm/waymark with Helm's own engine and Kubernetes' schemas.

Run by scripts/check-deploy, which installs the tools and sets PYTHONPATH.
Exits non-zero, after printing every problem found, if anything is wrong.

What runs, per values file in helm/waymark/ci/ and per Kubernetes version:
  1. values.schema.json is a valid draft-07 schema; values.yaml and every
     values file (over the defaults) pass it (Python jsonschema).
  2. Helm's linter, strict (warnings are errors), at that Kubernetes version.
  3. Helm's renderer (Helm 4.2.3's Go SDK via helm-python-sdk), which also
     applies values.schema.json the way helm install does.
  4. Every rendered manifest parses as YAML and validates against that
     Kubernetes version's API schema, strict (unknown fields are errors),
     with kubernetes-validate; ServiceMonitors against the Prometheus
     Operator CRD's schema (node, @kubernetes-models/prometheus-operator).
  5. Consistency checks no schema can make: selectors match the pod labels,
     Service, Ingress, ServiceMonitor and HPA references resolve, every
     WAYMARK_* variable set is one waymark reads (src/, or $WAYMARK_SRC), the
     TOML the chart writes parses, the restrictive securityContext is there,
     shutdown fits the grace period. With judge.mode=kafka, the same for the
     judge's Deployment, plus: no selector of one takes in the other's pods,
     both run with the same settings, secrets and volumes, the judge never
     surges past the partitions of the hits topic.
Then values that must be refused are refused, with the expected message.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from helm_python import _native

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "waymark"
CI = CHART / "ci"
# The oldest version Chart.yaml admits, the last without the preStop sleep
# action, the first with it, and the newest kubernetes-validate knows.
KUBE_VERSIONS = ["1.25.0", "1.29.0", "1.30.0", "1.37.0"]
RELEASE, NAMESPACE = "waymark", "mail"
SERVICEMONITOR_JS = pathlib.Path(__file__).with_name("validate-servicemonitor.js")
NPM_DIR = os.environ.get("WAYMARK_DEPLOY_NPM")

problems: list[str] = []
checks = 0


def check(ok: bool, message: str) -> bool:
    global checks
    checks += 1
    if not ok:
        problems.append(message)
    return ok


def deep_merge(base: dict, over: dict) -> dict:
    """Helm's coalescing: maps merge, anything else replaces, null deletes."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def render(values: dict | None, kube: str, api_versions: list[str] | None = None) -> dict[str, str]:
    """helm template: the chart's own engine, offline, at a Kubernetes version."""
    opts = {"name": RELEASE, "namespace": NAMESPACE, "kube_version": "v" + kube}
    if api_versions:
        opts["api_versions"] = api_versions
    with helm.Chart.load(CHART) as chart:
        # Chart.render() does not expose kube_version; helm_render takes it.
        out = _native.call_string("helm_render", chart._raw(), json.dumps(values) if values else None, json.dumps(opts))
    return json.loads(out)


def known_env_vars() -> set[str]:
    """The WAYMARK_* variables waymark reads: the settings declared in src/config/settings.rs
    (`name: Type = "WAYMARK_…", …`) and clap's env attributes."""
    names = set()
    for path in pathlib.Path(os.environ.get("WAYMARK_SRC", ROOT / "src")).rglob("*.rs"):
        text = path.read_text()
        names.update(re.findall(r'=\s*"(WAYMARK_[A-Z0-9_]+)"\s*,', text))
        names.update(re.findall(r'env\s*=\s*"(WAYMARK_[A-Z0-9_]+)"', text))
    return names


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def validate_values_schema(defaults: dict, files: list[pathlib.Path]) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    try:
        jsonschema.Draft7Validator.check_schema(schema)
        check(True, "")
    except jsonschema.SchemaError as e:
        check(False, f"values.schema.json is not a valid draft-07 schema: {e.message}")
        return
    validator = jsonschema.Draft7Validator(schema)
    for name, values in [("values.yaml", defaults)] + [(f.name, deep_merge(defaults, yaml.safe_load(f.read_text()) or {})) for f in files]:
        errors = sorted(validator.iter_errors(values), key=lambda e: list(e.path))
        check(not errors, f"{name} against values.schema.json: " + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors))
        print(f"  values.schema.json accepts {name}" if not errors else f"  values.schema.json REJECTS {name}")


def lint(values: dict, label: str, kube: str) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v" + kube)
    bad = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report.get("errors", [])]
    check(not bad, f"helm lint --strict {label} (k8s {kube}): " + "; ".join(m["error"].strip() for m in bad))


def role(workload: dict) -> str:
    """edge (`waymark serve`) or judge (`waymark judge`, judge.mode=kafka)."""
    return "judge" if workload["spec"]["template"]["spec"]["containers"][0].get("args") == ["judge"] else "edge"


def pod_env(workload: dict) -> dict[str, dict]:
    return {e["name"]: e for e in workload["spec"]["template"]["spec"]["containers"][0].get("env", [])}


def check_manifests(docs: list[dict], values: dict, label: str, kube: str, env_known: set[str], servicemonitors: list) -> None:
    where = f"{label} (k8s {kube})"
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        check(bool(d.get("metadata", {}).get("name")), f"{where}: a {d['kind']} has no name")
        if d["kind"] == "ServiceMonitor":
            servicemonitors.append({"label": f"{where} ServiceMonitor/{d['metadata']['name']}", "object": d})
            continue
        try:
            kubernetes_validate.validate(d, kube, strict=True)
            check(True, "")
        except kubernetes_validate.ValidationError as e:
            check(False, f"{where}: {d['kind']}/{d['metadata']['name']} fails the Kubernetes {kube} schema at {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            check(False, f"{where}: no Kubernetes {kube} schema for {d['apiVersion']} {d['kind']}: {e.message}")

    # One edge workload; with judge.mode=kafka also one judge Deployment.
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    edges = [w for w in workloads if role(w) == "edge"]
    judges = [w for w in workloads if role(w) == "judge"]
    judge_mode = values["judge"]["mode"] == "kafka"
    if not check(len(edges) == 1, f"{where}: expected one edge Deployment or StatefulSet (waymark serve), got {len(edges)}"):
        return
    if not check(len(judges) == int(judge_mode), f"{where}: {len(judges)} judge workloads (waymark judge) with judge.mode={values['judge']['mode']}"):
        return
    w = edges[0]
    want_kind = "StatefulSet" if values["persistence"]["enabled"] else "Deployment"
    check(w["kind"] == want_kind, f"{where}: workload is a {w['kind']}, expected {want_kind}")
    for j in judges:
        check(j["kind"] == "Deployment", f"{where}: the judge is a {j['kind']}, expected a Deployment (its spool is judged again if lost)")
    labels_of = {id(x): x["spec"]["template"]["metadata"]["labels"] for x in workloads}
    for x in workloads:
        check(matches(x["spec"]["selector"]["matchLabels"], labels_of[id(x)]), f"{where}: {x['kind']}/{x['metadata']['name']} selector does not match its pod labels")
        for y in workloads:
            if y is not x:
                check(not matches(x["spec"]["selector"]["matchLabels"], labels_of[id(y)]), f"{where}: {x['kind']}/{x['metadata']['name']} selector also takes in the pods of {y['kind']}/{y['metadata']['name']}")

    def selected(selector: dict) -> list[dict]:
        """The workloads whose pods a label selector takes in."""
        return [x for x in workloads if matches(selector, labels_of[id(x)])]

    def ports_of(x: dict) -> dict[str, int]:
        return {p["name"]: p["containerPort"] for p in x["spec"]["template"]["spec"]["containers"][0]["ports"]}

    # Replicas: the HPA owns the count when it exists.
    hpas_of: dict[int, list] = {id(x): [] for x in workloads}
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        ref = h["spec"]["scaleTargetRef"]
        target = [x for x in workloads if (ref["kind"], ref["name"]) == (x["kind"], x["metadata"]["name"])]
        if check(len(target) == 1, f"{where}: HPA/{h['metadata']['name']} targets {ref['kind']}/{ref['name']}, which is not a workload"):
            hpas_of[id(target[0])].append(h)
    check(bool(hpas_of[id(w)]) == values["autoscaling"]["enabled"], f"{where}: edge HPA present={bool(hpas_of[id(w)])} but autoscaling.enabled={values['autoscaling']['enabled']}")
    for j in judges:
        check(bool(hpas_of[id(j)]) == values["judge"]["autoscaling"]["enabled"], f"{where}: judge HPA present={bool(hpas_of[id(j)])} but judge.autoscaling.enabled={values['judge']['autoscaling']['enabled']}")
    for x in workloads:
        check(len(hpas_of[id(x)]) <= 1, f"{where}: several HPAs scale {x['metadata']['name']}")
        check(("replicas" in x["spec"]) != bool(hpas_of[id(x)]), f"{where}: {x['metadata']['name']}: replicas must be set exactly when there is no HPA")

    # Services, Ingress, ServiceMonitor, PDB each find the pods of one workload, and their ports.
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    for s in services.values():
        sel = selected(s["spec"]["selector"])
        if check(len(sel) == 1, f"{where}: Service/{s['metadata']['name']} selects the pods of {len(sel)} workloads, expected one"):
            for p in s["spec"]["ports"]:
                check(p["targetPort"] in ports_of(sel[0]), f"{where}: Service/{s['metadata']['name']} port {p['name']} targets {p['targetPort']}, not a container port of {sel[0]['metadata']['name']}")
    for ing in by_kind.get("Ingress", []):
        check(sorted(r["host"] for r in ing["spec"]["rules"]) == sorted(values["ingress"]["hosts"]), f"{where}: Ingress hosts differ from ingress.hosts")
        for r in ing["spec"]["rules"]:
            for p in r["http"]["paths"]:
                b = p["backend"]["service"]
                svc = services.get(b["name"])
                check(svc is not None and any(sp["name"] == b["port"].get("name") for sp in svc["spec"]["ports"]), f"{where}: Ingress path {r['host']}{p['path']} points at a missing Service port")
                check(b["port"].get("name") == "http", f"{where}: Ingress must route to the public port only")
                check(svc is not None and selected(svc["spec"]["selector"]) == [w], f"{where}: Ingress path {r['host']}{p['path']} routes to pods other than the edge's")
    for sm in by_kind.get("ServiceMonitor", []):
        for ep in sm["spec"]["endpoints"]:
            check(any(matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"]) and any(p["name"] == ep["port"] for p in s["spec"]["ports"]) for s in services.values()), f"{where}: ServiceMonitor endpoint port {ep['port']} is on no selected Service")
    pdbs_of: dict[int, list] = {id(x): [] for x in workloads}
    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = selected(pdb["spec"]["selector"]["matchLabels"])
        if check(len(sel) == 1, f"{where}: PDB/{pdb['metadata']['name']} selects the pods of {len(sel)} workloads, expected one"):
            pdbs_of[id(sel[0])].append(pdb)
    check(bool(pdbs_of[id(w)]) == values["podDisruptionBudget"]["enabled"], f"{where}: edge PDB presence differs from podDisruptionBudget.enabled")
    for j in judges:
        check(bool(pdbs_of[id(j)]) == values["judge"]["podDisruptionBudget"]["enabled"], f"{where}: judge PDB presence differs from judge.podDisruptionBudget.enabled")
    want_monitors = (1 + len(judges)) if values["metrics"]["serviceMonitor"]["enabled"] else 0
    check(len(by_kind.get("ServiceMonitor", [])) == want_monitors, f"{where}: {len(by_kind.get('ServiceMonitor', []))} ServiceMonitors, expected {want_monitors} (one for the edge, one for the judge)")
    check(bool(by_kind.get("Ingress")) == values["ingress"]["enabled"], f"{where}: Ingress presence differs from ingress.enabled")
    check(("admin" in ports_of(w)) == values["admin"]["enabled"], f"{where}: admin port presence differs from admin.enabled")

    # The edge and the judge run with one configuration: the same topics and
    # group, and the same config, key ring and secrets (the judge opens the
    # tokens again and produces the events).
    edge_env = pod_env(w)
    if judge_mode:
        (j,) = judges
        judge_env = pod_env(j)
        for name in ["WAYMARK_JUDGE", "WAYMARK_KAFKA_HITS_TOPIC", "WAYMARK_KAFKA_JUDGE_GROUP", "WAYMARK_KAFKA_HITS_PARTITIONS", "WAYMARK_KAFKA_BROKERS"]:
            check(name in edge_env and edge_env.get(name) == judge_env.get(name), f"{where}: {name} differs between the edge and the judge, or is missing")
        check(edge_env.get("WAYMARK_JUDGE", {}).get("value") == "kafka", f"{where}: judge.mode=kafka but the edge's WAYMARK_JUDGE is not kafka")
        for name in set(edge_env) | set(judge_env):
            if name not in {"WAYMARK_LISTEN", "WAYMARK_ADMIN_LISTEN", "WAYMARK_ADMIN_TOKEN"}:
                check(edge_env.get(name) == judge_env.get(name), f"{where}: {name} differs between the edge and the judge")
        check("WAYMARK_ADMIN_TOKEN" not in judge_env and "WAYMARK_LISTEN" not in judge_env, f"{where}: the judge has a public listener or an admin token; it serves neither")
        ev = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
        jv = {v["name"]: v for v in j["spec"]["template"]["spec"]["volumes"]}
        for name in set(ev) | set(jv):
            if name != "data":
                check(ev.get(name) == jv.get(name), f"{where}: volume {name} differs between the edge and the judge")
        check("emptyDir" in jv.get("data", {}), f"{where}: the judge's data directory is not an emptyDir")
        roll = j["spec"].get("strategy", {}).get("rollingUpdate", {})
        check(roll.get("maxSurge") == 0, f"{where}: the judge's rollout may add a pod first (maxSurge {roll.get('maxSurge')}): with as many judges as partitions it would never be ready")
        most = hpas_of[id(j)][0]["spec"]["maxReplicas"] if hpas_of[id(j)] else j["spec"]["replicas"]
        check(most <= int(judge_env["WAYMARK_KAFKA_HITS_PARTITIONS"]["value"]), f"{where}: up to {most} judges for {judge_env['WAYMARK_KAFKA_HITS_PARTITIONS']['value']} partitions")
    else:
        check(not any(n in edge_env for n in ["WAYMARK_JUDGE", "WAYMARK_KAFKA_HITS_TOPIC", "WAYMARK_KAFKA_JUDGE_GROUP", "WAYMARK_KAFKA_HITS_PARTITIONS"]), f"{where}: judge.mode=local but the edge is given Kafka judge settings")
        threads = values["judge"].get("threads")
        got = edge_env.get("WAYMARK_JUDGE_THREADS", {}).get("value")
        check(got == (None if threads is None else str(threads)), f"{where}: WAYMARK_JUDGE_THREADS is {got!r}, judge.threads is {threads!r}")

    for x in workloads:
        check_pod(x, role(x), values, by_kind, docs, f"{where} {role(x)}", kube, env_known)


def check_pod(w: dict, role: str, values: dict, by_kind: dict, docs: list[dict], where: str, kube: str, env_known: set[str]) -> None:
    """What must hold of one workload's pod, the edge's or the judge's."""
    pod = w["spec"]["template"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = {e["name"]: e for e in c.get("env", [])}

    # Probes: the edge's on the public port, the judge's on the admin port
    # (it has no other).
    port = "admin" if role == "judge" else "http"
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}, f"{where}: liveness probe is not GET /healthz on {port}")
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}, f"{where}: readiness probe is not GET /readyz on {port}")
    check(c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port}, f"{where}: startup probe is not GET /healthz on {port}")
    if role == "edge":
        check(ports.get("http") == 8080 and env["WAYMARK_LISTEN"]["value"] == "0.0.0.0:8080", f"{where}: public listener is not 0.0.0.0:8080")
    else:
        check("http" not in ports, f"{where}: the judge has a public port")
    if values["admin"]["enabled"] or role == "judge":
        check(ports.get("admin") == 9090 and env["WAYMARK_ADMIN_LISTEN"]["value"] == "0.0.0.0:9090", f"{where}: admin listener is not 0.0.0.0:9090")

    # Environment: only variables waymark reads (plus the chart's own helper).
    for name in env:
        if name.startswith("WAYMARK_"):
            check(name in env_known, f"{where}: sets {name}, which waymark does not read (not in src/)")
    # Referenced ConfigMaps and Secrets exist, unless the values name them as pre-existing.
    created = {(d["kind"], d["metadata"]["name"]) for d in docs}
    external_secrets = {values["keys"]["existingSecret"], values["admin"]["token"]["existingSecret"], values["privacy"]["ipHashKey"]["existingSecret"], values["kafka"]["propertiesSecret"]["name"]} - {""}
    external_secrets |= {v["secret"]["secretName"] for v in values["extraVolumes"] if "secret" in v}
    external_cms = {values["scannerRules"]["existingConfigMap"]} - {""}
    for e in env.values():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            check(("Secret", ref["name"]) in created or ref["name"] in external_secrets, f"{where}: env {e['name']} reads Secret {ref['name']}, which nothing creates")
            for d in docs:
                if (d["kind"], d["metadata"]["name"]) == ("Secret", ref["name"]):
                    check(ref["key"] in d.get("data", {}), f"{where}: Secret {ref['name']} has no key {ref['key']}")
    for v in spec["volumes"]:
        if "configMap" in v:
            name = v["configMap"]["name"]
            check(("ConfigMap", name) in created or name in external_cms, f"{where}: volume {v['name']} mounts ConfigMap {name}, which nothing creates")
        if "secret" in v:
            name = v["secret"]["secretName"]
            check(("Secret", name) in created or name in external_secrets, f"{where}: volume {v['name']} mounts Secret {name}, which nothing creates")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"] for v in spec["volumes"]} | {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
    for m in c["volumeMounts"]:
        check(m["name"] in volumes, f"{where}: mount {m['mountPath']} uses volume {m['name']}, which is not defined")
        check("subPath" not in m, f"{where}: mount {m['mountPath']} uses subPath (no live updates, and the key file check needs the ..data layout)")
    keys_file = env["WAYMARK_KEYS_FILE"]["value"]
    check(os.path.dirname(keys_file) in mounts and mounts[os.path.dirname(keys_file)]["name"] == "keys", f"{where}: WAYMARK_KEYS_FILE {keys_file} is not in the key Secret's mount")
    if "WAYMARK_SCANNER_RULES" in env:
        check(os.path.dirname(env["WAYMARK_SCANNER_RULES"]["value"]) in mounts, f"{where}: WAYMARK_SCANNER_RULES is outside every mount")
    check(os.path.dirname(env["WAYMARK_CONFIG"]["value"]) in mounts, f"{where}: WAYMARK_CONFIG is outside every mount")

    # Writable paths: the root filesystem is read-only, so the data dir and
    # /tmp must be volumes.
    for path in ["/var/lib/waymark", "/tmp"]:
        check(path in mounts and not mounts[path].get("readOnly"), f"{where}: {path} is not a writable volume")
    check(env["WAYMARK_DATA_DIR"]["value"] == "/var/lib/waymark" and env["WAYMARK_SPOOL_DIR"]["value"].startswith("/var/lib/waymark/"), f"{where}: data or spool dir is not on the data volume")

    # The restrictive securityContext, as the chart's defaults give it.
    sc, psc = c["securityContext"], spec["securityContext"]
    if values["securityContext"] == yaml.safe_load((CHART / "values.yaml").read_text())["securityContext"]:
        check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65532, f"{where}: container is not non-root 65532")
        check(sc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem is writable")
        check(sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not all dropped")
        check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault" and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp is not RuntimeDefault")
        check(psc.get("fsGroup") == 65532, f"{where}: fsGroup is not 65532 (volumes would not be writable)")
    check(spec.get("automountServiceAccountToken") is False, f"{where}: the service account token is mounted")

    # Shutdown fits in the grace period; the preStop sleep only where the
    # kubelet has it, and only on the edge (nothing routes to a judge).
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    want_sleep = values["preStopSleepSeconds"] if role == "edge" and tuple(map(int, kube.split(".")[:2])) >= (1, 30) else 0
    check(sleep == want_sleep, f"{where}: preStop sleep is {sleep}s, expected {want_sleep}s")
    need_ms = sleep * 1000 + int(env["WAYMARK_SHUTDOWN_GRACE_MS"]["value"]) + (int(env["WAYMARK_KAFKA_FLUSH_TIMEOUT_MS"]["value"]) if "WAYMARK_KAFKA_BROKERS" in env else 0)
    check(spec["terminationGracePeriodSeconds"] * 1000 > need_ms, f"{where}: terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} does not cover shutdown ({need_ms} ms)")

    # What the chart writes for waymark to read.
    for cm in by_kind.get("ConfigMap", []):
        for key, text in cm.get("data", {}).items():
            if key.endswith(".toml"):
                try:
                    tomllib.loads(text)
                    check(True, "")
                except tomllib.TOMLDecodeError as e:
                    check(False, f"{where}: ConfigMap {cm['metadata']['name']} {key} is not TOML: {e}")
    if values["keys"]["ring"]:
        (secret,) = [s for s in by_kind.get("Secret", []) if s["metadata"]["name"].endswith("-keys")]
        check(base64.b64decode(secret["data"]["keys"]).decode() == values["keys"]["ring"], f"{where}: key Secret does not hold keys.ring")
    if "WAYMARK_KAFKA_PROPERTIES" in env:
        for pair in env["WAYMARK_KAFKA_PROPERTIES"]["value"].split(","):
            check(pair.startswith("$(") or re.fullmatch(r"[a-z0-9._]+=[^,]+", pair) is not None, f"{where}: WAYMARK_KAFKA_PROPERTIES entry {pair!r} is not KEY=VALUE")


def validate_servicemonitors(servicemonitors: list) -> None:
    if not servicemonitors:
        check(False, "no ServiceMonitor was rendered by any values file: the CRD schema check ran on nothing")
        return
    if not NPM_DIR:
        check(False, "WAYMARK_DEPLOY_NPM is not set: cannot validate ServiceMonitors")
        return
    run = subprocess.run(["node", str(SERVICEMONITOR_JS)], input=json.dumps(servicemonitors), text=True, capture_output=True,
                         env={**os.environ, "NODE_PATH": os.path.join(NPM_DIR, "node_modules")})
    print("  ServiceMonitor CRD schema: " + f"{len(servicemonitors)} checked" + ("" if run.returncode == 0 else ", FAILED"))
    check(run.returncode == 0, "ServiceMonitor schema check failed:\n" + run.stdout + run.stderr)


# Values that must be refused, and a piece of the message that says why.
REFUSED = [
    ("default values (no key ring)", {}, "no key ring"),
    ("both key sources", {"keys": {"existingSecret": "k", "ring": "k1:" + "A" * 43}}, "not both"),
    ("malformed key ring", {"keys": {"ring": "k1:short"}}, "/keys/ring"),
    ("unknown value", {"keys": {"existingSecret": "k"}, "replicas": 3}, "additional properties 'replicas'"),
    ("wrong type", {"keys": {"existingSecret": "k"}, "replicaCount": "three"}, "/replicaCount"),
    ("short admin token", {"keys": {"existingSecret": "k"}, "admin": {"token": {"value": "short"}}}, "/admin/token/value"),
    ("hashed IPs without a key", {"keys": {"existingSecret": "k"}, "privacy": {"ipMode": "hashed"}}, "ipHashKey"),
    ("unknown ip mode", {"keys": {"existingSecret": "k"}, "privacy": {"ipMode": "anonymous"}}, "/privacy/ipMode"),
    ("grace period shorter than shutdown", {"keys": {"existingSecret": "k"}, "terminationGracePeriodSeconds": 12}, "terminationGracePeriodSeconds=12 is too short"),
    ("grace period without room for Kafka's flush", {"keys": {"existingSecret": "k"}, "kafka": {"brokers": "k:9092"}, "terminationGracePeriodSeconds": 18}, "kafka.flushTimeoutMs"),
    ("ingress without hosts", {"keys": {"existingSecret": "k"}, "ingress": {"enabled": True}}, "ingress.hosts"),
    ("bad ingress host", {"keys": {"existingSecret": "k"}, "ingress": {"enabled": True, "hosts": ["T.Example.com/x"]}}, "/ingress/hosts/0"),
    ("bad brokers", {"keys": {"existingSecret": "k"}, "kafka": {"brokers": "kafka"}}, "/kafka/brokers"),
    ("ServiceMonitor without the admin port", {"keys": {"existingSecret": "k"}, "admin": {"enabled": False}, "metrics": {"serviceMonitor": {"enabled": True}}}, "needs admin.enabled"),
    ("PDB without a bound", {"keys": {"existingSecret": "k"}, "podDisruptionBudget": {"maxUnavailable": ""}}, "maxUnavailable or minAvailable"),
    ("HPA min above max", {"keys": {"existingSecret": "k"}, "autoscaling": {"minReplicas": 5, "maxReplicas": 3}}, "minReplicas is above"),
    ("geoip file without a volume", {"keys": {"existingSecret": "k"}, "geoip": {"asnDb": "a.mmdb"}}, "geoip.volume"),
    ("bad digest", {"keys": {"existingSecret": "k"}, "image": {"digest": "latest"}}, "/image/digest"),
    ("unknown judge mode", {"keys": {"existingSecret": "k"}, "judge": {"mode": "remote"}}, "/judge/mode"),
    ("no judge threads", {"keys": {"existingSecret": "k"}, "judge": {"threads": 0}}, "/judge/threads"),
    ("Kafka judge without brokers", {"keys": {"existingSecret": "k"}, "judge": {"mode": "kafka"}}, "needs kafka.brokers"),
    ("judge threads with the Kafka judge", {"keys": {"existingSecret": "k"}, "kafka": {"brokers": "k:9092"}, "judge": {"mode": "kafka", "threads": 4}}, "judge.threads is for judge.mode=local"),
    ("hits on the events topic", {"keys": {"existingSecret": "k"}, "kafka": {"brokers": "k:9092", "hitsTopic": "waymark.events"}, "judge": {"mode": "kafka"}}, "a topic of their own"),
    ("more judges than partitions", {"keys": {"existingSecret": "k"}, "kafka": {"brokers": "k:9092", "hitsPartitions": 2}, "judge": {"mode": "kafka", "replicaCount": 3}}, "never becomes ready"),
    ("judges autoscaled past the partitions", {"keys": {"existingSecret": "k"}, "kafka": {"brokers": "k:9092"}, "judge": {"mode": "kafka", "autoscaling": {"enabled": True, "maxReplicas": 7}}}, "judge.autoscaling.maxReplicas"),
    ("judge HPA min above max", {"keys": {"existingSecret": "k"}, "kafka": {"brokers": "k:9092"}, "judge": {"mode": "kafka", "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}}}, "judge.autoscaling.minReplicas is above"),
    ("judge PDB without a bound", {"keys": {"existingSecret": "k"}, "kafka": {"brokers": "k:9092"}, "judge": {"mode": "kafka", "podDisruptionBudget": {"maxUnavailable": ""}}}, "judge.podDisruptionBudget needs"),
]


def main() -> int:
    print(f"  helm SDK {helm.helm_sdk_version()} (libhelm_c {helm.helm_c_version()}), kubernetes-validate {kubernetes_validate.__version__ if hasattr(kubernetes_validate, '__version__') else ''}".rstrip(", "))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    files = sorted(CI.glob("*-values.yaml"))
    check(len(files) >= 3, f"expected at least three values files in {CI}")
    # The example values in docs/deployment.md are checked like the others,
    # so the instructions cannot drift from the chart.
    docs = ROOT / "docs" / "deployment.md"
    example = re.search(r"## 4\. Install the chart.*?```yaml\n(.*?)```", docs.read_text(), re.S)
    if check(example is not None, "docs/deployment.md has no example values block under '## 4. Install the chart'"):
        scratch = tempfile.TemporaryDirectory()  # removed when main() returns
        tmp_docs = pathlib.Path(scratch.name) / "docs-deployment-md-values.yaml"
        tmp_docs.write_text(example.group(1))
        files.append(tmp_docs)
    validate_values_schema(defaults, files)

    env_known = known_env_vars()
    check(len(env_known) > 10, "found no WAYMARK_* variables in src/: cannot check the chart's environment")
    servicemonitors: list = []
    for f in files:
        values = yaml.safe_load(f.read_text()) or {}
        merged = deep_merge(defaults, values)
        for kube in KUBE_VERSIONS:
            before = len(problems)
            lint(values, f.name, kube)
            try:
                manifests = render(values, kube)
            except helm.HelmError as e:
                check(False, f"helm template {f.name} (k8s {kube}) failed: {e}")
                continue
            docs = []
            for path, text in sorted(manifests.items()):
                if path.endswith("NOTES.txt"):
                    check(bool(text.strip()), f"{f.name}: NOTES.txt is empty")
                    continue
                try:
                    docs += [d for d in yaml.safe_load_all(text) if d]
                except yaml.YAMLError as e:
                    check(False, f"{f.name} (k8s {kube}): {path} is not YAML: {e}")
            check_manifests(docs, merged, f.name, kube, env_known, servicemonitors)
            kinds = sorted(d["kind"] for d in docs)
            if len(problems) == before:
                print(f"  ok   {f.name} k8s {kube}: lint --strict, render, {len(docs)} manifests valid ({', '.join(kinds)})")
            else:
                print(f"  FAIL {f.name} k8s {kube}: {len(problems) - before} problem(s), listed at the end")
    validate_servicemonitors(servicemonitors)

    # helm package: the chart archives (and .helmignore keeps ci/ out).
    with tempfile.TemporaryDirectory() as tmp:
        archive = helm.package(CHART, destination=tmp)
        check(pathlib.Path(archive).is_file(), "helm package made no archive")
        print(f"  helm package: {pathlib.Path(archive).name}")

    for label, values, expected in REFUSED:
        try:
            render(values or None, KUBE_VERSIONS[-1])
            check(False, f"values that must be refused were accepted: {label}")
        except helm.HelmError as e:
            check(expected in str(e), f"{label}: refused, but the message lacks {expected!r}: {e}")
    print(f"  {len(REFUSED)} kinds of bad values refused with the expected message")

    if problems:
        print(f"\n{len(problems)} problem(s) in the chart:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"  chart ok: {checks} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
