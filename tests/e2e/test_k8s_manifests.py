"""config/k8s/ validated without a cluster: every built-in object against the Kubernetes
OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors) for the oldest and the
newest version we support, every Gateway API / Inference Extension object against the schemas
in config/k8s/schemas/, and the references between them checked: selectors reach the pods,
ports line up, probes hit slm's open health endpoints, the container's flags are real `slm`
flags, and the HPA's metric is one slm exports."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT

kv = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

K8S = ROOT / "config" / "k8s"
SCHEMAS = K8S / "schemas"
# k3s's oldest supported minor with the preStop `sleep` action on by default, and the newest.
VERSIONS = ["1.30.0", kv.latest_version()]
CRD_SCHEMAS = {
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepool-inference.networking.k8s.io-v1.json",
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective"): "inferenceobjective-inference.networking.x-k8s.io-v1alpha2.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-gateway.networking.k8s.io-v1.json",
}


def documents():
    out = []
    for f in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                out.append((f.relative_to(ROOT), doc))
    return out


DOCS = documents()


def find(kind, name):
    hits = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


def crd_registry():
    reg = referencing.Registry()
    for f in SCHEMAS.glob("*.json"):
        reg = reg.with_resource(f.name, referencing.Resource.from_contents(json.loads(f.read_text())))
    return reg


def test_every_object_is_valid_for_its_schema():
    assert len(DOCS) >= 12
    reg = crd_registry()
    for path, doc in DOCS:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:
            schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text())
            validator = jsonschema.Draft202012Validator(schema, registry=reg)
            errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
            assert not errors, f"{path} {key}: {errors}"
        else:
            for v in VERSIONS:
                kv.validate(doc, v, strict=True)


def test_the_crd_schemas_catch_what_the_api_server_would_refuse():
    reg = crd_registry()
    pool = json.loads(json.dumps(find("InferencePool", "slm")))
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[("inference.networking.k8s.io/v1", "InferencePool")]).read_text())
    validator = jsonschema.Draft202012Validator(schema, registry=reg)
    bad = [
        lambda p: p["spec"]["targetPorts"].clear(),
        lambda p: p["spec"]["targetPorts"][0].update(number=70000),
        lambda p: p["spec"]["endpointPickerRef"].pop("port"),
        lambda p: p["spec"]["endpointPickerRef"].update(failureMode="Maybe"),
        lambda p: p["spec"]["selector"].update(matchExpressions=[]),
        lambda p: p["spec"].update(targetPortNumber=8080),  # the v1alpha2 field name
    ]
    for mutate in bad:
        p = json.loads(json.dumps(pool))
        mutate(p)
        assert list(validator.iter_errors(p)), f"accepted: {p['spec']}"
    with pytest.raises(kv.ValidationError):
        d = json.loads(json.dumps(find("Deployment", "slm")))
        d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
        kv.validate(d, VERSIONS[-1], strict=True)


def pod_spec(name):
    return find("Deployment", name)["spec"]["template"]["spec"]


def container(name):
    return next(c for c in pod_spec(name)["containers"] if c["name"] == "slm")


def test_selectors_and_ports_line_up():
    dep = find("Deployment", "slm")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = find("Service", "slm")
    assert svc["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in container("slm")["ports"]}
    assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])
    pool = find("InferencePool", "slm")
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [ports["http"]]
    # The pool's picker is the EPP Service, on its ext-proc port; the EPP serves this pool.
    ref = pool["spec"]["endpointPickerRef"]
    epp_svc = find("Service", ref["name"])
    assert ref["port"]["number"] in [p["port"] for p in epp_svc["spec"]["ports"]]
    epp = find("Deployment", ref["name"])
    assert f"--pool-name={pool['metadata']['name']}" in epp["spec"]["template"]["spec"]["containers"][0]["args"]
    assert epp_svc["spec"]["selector"].items() <= epp["spec"]["template"]["metadata"]["labels"].items()
    assert epp["spec"]["template"]["spec"]["serviceAccountName"] == find("ServiceAccount", "slm-epp")["metadata"]["name"]
    for o in (d for _, d in DOCS if d["kind"] == "InferenceObjective"):
        assert o["spec"]["poolRef"]["name"] == pool["metadata"]["name"]
    route = find("HTTPRoute", "slm")
    refs = [b for r in route["spec"]["rules"] for b in r["backendRefs"]]
    assert refs == [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "slm"}]
    hpa = find("HorizontalPodAutoscaler", "slm")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "slm"}


def test_volumes_mounts_and_secrets_exist():
    spec = pod_spec("slm")
    volumes = {v["name"] for v in spec["volumes"]}
    for c in spec["containers"] + spec["initContainers"]:
        assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, c["name"]
    claim = next(v for v in spec["volumes"] if "persistentVolumeClaim" in v)["persistentVolumeClaim"]["claimName"]
    find("PersistentVolumeClaim", claim)
    key = next(e for e in container("slm")["env"] if e["name"] == "SLM_API_KEY")["valueFrom"]["secretKeyRef"]
    assert key["key"] in find("Secret", key["name"])["stringData"]
    # The init container writes models where the server reads them.
    home = {e["name"]: e.get("value") for e in container("slm")["env"]}["SLM_HOME"]
    init = spec["initContainers"][0]
    assert {e["name"]: e["value"] for e in init["env"]}["SLM_HOME"] == home
    assert {m["mountPath"] for m in init["volumeMounts"]} == {f"{home}/models"}
    # A read-only root needs SLM_HOME (the response store) on a writable volume.
    mounts = {m["mountPath"]: m for m in container("slm")["volumeMounts"]}
    assert container("slm")["securityContext"]["readOnlyRootFilesystem"] and not mounts[home].get("readOnly")


def open_endpoints():
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    return {p for p, ops in spec["paths"].items() if ops.get("get", {}).get("security") == []}


def test_probes_use_open_health_endpoints_and_drain_fits_the_grace_period():
    c = container("slm")
    open_paths = open_endpoints()
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] in open_paths, probe
    # preStop wait + slm's drain (shutdown_timeout_s, 30 s by default) fit in the grace period.
    sleep_s = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep_s + 30 < pod_spec("slm")["terminationGracePeriodSeconds"]
    # A model that takes a while to load has the startup probe's whole window.
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120


def flags_of(*subcommand):
    out = subprocess.run([str(BIN), *subcommand, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"--[a-z][a-z0-9-]*", out))


def test_the_containers_run_real_slm_commands():
    c = container("slm")
    # The image's entrypoint is `slm serve --host 0.0.0.0 --port 8080` (docker/Dockerfile).
    entry = re.search(r'ENTRYPOINT \[(.*)\]', (ROOT / "docker" / "Dockerfile").read_text()).group(1)
    assert '"serve"' in entry and '"8080"' in entry
    serve_flags = flags_of("serve")
    assert {a for a in c["args"] if a.startswith("--")} <= serve_flags
    init = pod_spec("slm")["initContainers"][0]["command"]
    assert init[:2] == ["/usr/local/bin/slm", "pull"]
    catalog = (ROOT / "crates" / "server" / "src" / "hub" / "catalog.rs")
    assert f'"{init[2]}"' in catalog.read_text(), f"{init[2]} is not in the pull catalog"


def test_the_autoscaler_reads_a_metric_slm_exports():
    hpa = find("HorizontalPodAutoscaler", "slm")
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = yaml.safe_load(find("ConfigMap", "prometheus-adapter-slm-rules")["data"]["config.yaml"])["rules"]
    rule = next(r for r in rules if r["name"]["as"] == metric)
    source = rule["name"]["matches"]
    assert source in rule["seriesQuery"]
    compat = (ROOT / "crates" / "server" / "src" / "metrics_compat.rs").read_text()
    assert f'"{source}"' in compat, f"slm does not export {source}"
