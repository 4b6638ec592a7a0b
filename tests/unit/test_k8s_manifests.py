"""ops/k8s holds the farm's Kubernetes manifests: a worker Deployment and a KEDA
ScaledObject per queue, and the cluster exporter. No cluster runs here, so their structure
is checked: each queue has its Deployment and a ScaledObject aimed at it, the probes reach
the health endpoints where the farm's settings put them, the grace outlasts the shutdown
grace, the API key comes from a Secret, the scaling signal is the queue's demand with the
threshold its slot policy implies, and every metric and FARM_* variable they name exists.
The values are read the way a pod reads them: the container's environment (ConfigMap, then
its own env) given to the farm's real Settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from farm.broker.layout import INTAKE_QUEUE
from farm.cli.main import worker as worker_command
from farm.cli.observe import exporter as exporter_command
from farm.observe.names import exported_names
from farm.settings import DEFAULT_QUEUES, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)
QUEUES = {q.name for q in DEFAULT_QUEUES} | {INTAKE_QUEUE}
MARGIN_S = 30  # terminationGracePeriodSeconds over FARM_SHUTDOWN_GRACE_S, at least
# a quantity's suffix -> bytes (Kubernetes' binary and decimal suffixes)
UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    found: list[Obj] = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert isinstance(doc, dict) and doc.get("kind"), path.name
                found.append(doc)
    return found


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def name(obj: Obj) -> str:
    value: str = obj["metadata"]["name"]
    return value


def containers(deployment: Obj) -> list[Obj]:
    found: list[Obj] = deployment["spec"]["template"]["spec"]["containers"]
    return found


def argv(container: Obj) -> list[str]:
    return [str(a) for a in (*container.get("command", ()), *container.get("args", ()))]


def parsed(command: click.Command, args: list[str]) -> dict[str, Any]:
    """The options the farm's own CLI parses from these arguments (nothing runs)."""
    with command.make_context(command.name or "farm", args) as ctx:
        return dict(ctx.params)


def workers(objects: list[Obj]) -> dict[str, Obj]:
    """queue -> the worker Deployment consuming it (from its `farm worker -Q` command)."""
    found: dict[str, Obj] = {}
    for deployment in of_kind(objects, "Deployment"):
        (container,) = containers(deployment)  # one worker process per pod
        args = argv(container)
        if args[:2] != ["farm", "worker"]:
            continue
        queues = parsed(worker_command, args[2:])["queues"]
        assert len(queues) == 1, f"{name(deployment)}: one queue per Deployment, got {queues}"
        assert queues[0] not in found, f"two Deployments consume {queues[0]}"
        found[queues[0]] = deployment
    return found


def exporter(objects: list[Obj]) -> Obj:
    (found,) = [d for d in of_kind(objects, "Deployment")
                if argv(containers(d)[0])[:2] == ["farm", "exporter"]]
    return found


def environment(container: Obj, objects: list[Obj]) -> dict[str, str]:
    """The container's literal environment: its ConfigMaps in order, then its own values
    (Kubernetes' precedence). Secrets are not known here and are left out."""
    maps = {name(c): c.get("data", {}) for c in of_kind(objects, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", ()):
        if "configMapRef" in source:
            ref = source["configMapRef"]["name"]
            assert ref in maps, f"ConfigMap {ref} is not in ops/k8s"
            env.update({k: str(v) for k, v in maps[ref].items()})
    for entry in container.get("env", ()):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
    return env


SettingsOf = Callable[[Obj], Settings]


@pytest.fixture
def settings_of(objects: list[Obj], monkeypatch: pytest.MonkeyPatch) -> SettingsOf:
    """Settings as the farm builds them in this container: only its environment is set."""
    def build(container: Obj) -> Settings:
        with monkeypatch.context() as m:
            for var in list(os.environ):
                if var.startswith(("FARM_", "ANTHROPIC_")):
                    m.delenv(var)
            for var, value in environment(container, objects).items():
                m.setenv(var, value)
            return Settings()
    return build


def port_number(container: Obj, port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", ()) if "name" in p}
    assert port in named, f"container {container['name']} has no port named {port!r}"
    return int(named[port])


def quantity_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|Ki)?", str(text))
    assert match, f"not a memory quantity: {text!r}"
    return int(float(match[1]) * UNITS[match[2] or ""])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- the files --------------------------------------------------------------------------

def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_no_object_names_a_namespace(objects: list[Obj]) -> None:
    assert objects
    for obj in objects:
        assert "namespace" not in obj["metadata"], f"{obj['kind']} {name(obj)}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_same_objects(objects: list[Obj]) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d is not None]
    assert sorted((o["kind"], name(o)) for o in rendered) == \
        sorted((o["kind"], name(o)) for o in objects)


# --- one Deployment and one ScaledObject per queue ----------------------------------------

def test_every_queue_has_a_worker_deployment_and_a_scaled_object(objects: list[Obj]) -> None:
    by_queue = workers(objects)
    assert set(by_queue) == QUEUES
    deployments = {name(d): q for q, d in by_queue.items()}
    scaled = of_kind(objects, "ScaledObject")
    targets = []
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        ref = obj["spec"]["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment"
        assert ref.get("apiVersion", "apps/v1") == "apps/v1"
        assert ref["name"] in deployments, f"{name(obj)} targets no worker Deployment"
        targets.append(deployments[ref["name"]])
    assert sorted(targets) == sorted(QUEUES)  # each queue exactly once


def test_each_queue_selects_only_its_own_pods(objects: list[Obj]) -> None:
    # the HPA counts the pods of its target's selector: a selector that matched another
    # queue's pods would scale on the wrong count
    deployments = of_kind(objects, "Deployment")
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        for other in deployments:
            labels = other["spec"]["template"]["metadata"]["labels"]
            assert matches(selector, labels) == (other is deployment), \
                f"{name(deployment)}'s selector vs {name(other)}'s pods"
    for budget in of_kind(objects, "PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        hit = [d for d in deployments
               if matches(selector, d["spec"]["template"]["metadata"]["labels"])]
        assert len(hit) == 1, name(budget)


# --- the worker pods ------------------------------------------------------------------

def test_the_configuration_is_valid_for_the_farm(objects: list[Obj],
                                                 settings_of: SettingsOf) -> None:
    for queue, deployment in workers(objects).items():
        settings = settings_of(containers(deployment)[0])
        assert queue in settings.servable_queues
        assert settings.broker_url and settings.database_url


def test_probes_reach_the_health_endpoints(objects: list[Obj], settings_of: SettingsOf) -> None:
    for deployment in workers(objects).values():
        (container,) = containers(deployment)
        settings = settings_of(container)
        assert settings.health_port > 0, "FARM_HEALTH_PORT must be set: 0 serves no probes"
        # the kubelet probes the pod's IP: a worker on 127.0.0.1 would never be reachable
        assert settings.health_host == "0.0.0.0"
        for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/livez")):
            if probe == "startupProbe" and probe not in container:
                continue
            get = container[probe]["httpGet"]
            assert get["path"] == path, f"{name(deployment)} {probe}"
            assert port_number(container, get["port"]) == settings.health_port, \
                f"{name(deployment)} {probe} is not on FARM_HEALTH_PORT"


def test_worker_metrics_are_served_where_they_are_scraped(objects: list[Obj],
                                                          settings_of: SettingsOf) -> None:
    for deployment in workers(objects).values():
        (container,) = containers(deployment)
        settings = settings_of(container)
        assert settings.metrics_port > 0 and settings.metrics_host == "0.0.0.0"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == settings.metrics_port
        assert settings.metrics_port in {p["containerPort"] for p in container["ports"]}


def test_the_pod_grace_outlasts_the_shutdown_grace(objects: list[Obj],
                                                   settings_of: SettingsOf) -> None:
    for deployment in workers(objects).values():
        spec = deployment["spec"]["template"]["spec"]
        (container,) = containers(deployment)
        # Celery's warm shutdown on SIGTERM is the drain: nothing may stand before it
        assert "preStop" not in container.get("lifecycle", {}), name(deployment)
        grace = settings_of(container).shutdown_grace_s  # the default when unset
        assert spec["terminationGracePeriodSeconds"] >= grace + MARGIN_S, name(deployment)


def test_the_memory_limit_is_above_the_recycling_size(objects: list[Obj],
                                                      settings_of: SettingsOf) -> None:
    for deployment in workers(objects).values():
        (container,) = containers(deployment)
        resources = container["resources"]
        limit = quantity_bytes(resources["limits"]["memory"])
        assert quantity_bytes(resources["requests"]["memory"]) <= limit
        assert resources["requests"]["cpu"]
        rss_mb = settings_of(container).worker_max_rss_mb
        assert rss_mb > 0, f"{name(deployment)}: set FARM_WORKER_MAX_RSS_MB under the limit"
        assert limit > rss_mb * 2**20, f"{name(deployment)}: the OOM killer would come first"


def test_the_api_key_comes_only_from_a_secret(objects: list[Obj]) -> None:
    for deployment in workers(objects).values():
        (container,) = containers(deployment)
        keys = [e for e in container.get("env", ()) if e["name"] == "ANTHROPIC_API_KEY"]
        assert len(keys) == 1, name(deployment)
        assert set(keys[0]) == {"name", "valueFrom"}
        ref = keys[0]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"] and not ref.get("optional", False)
    for deployment in of_kind(objects, "Deployment"):
        for container in containers(deployment):
            for entry in container.get("env", ()):
                if "KEY" in entry["name"] or "PASSWORD" in entry["name"]:
                    assert "value" not in entry, f"{name(deployment)}: {entry['name']}"
    (exporting,) = containers(exporter(objects))  # the exporter calls no model
    assert all(e["name"] != "ANTHROPIC_API_KEY" for e in exporting.get("env", ()))
    for config in of_kind(objects, "ConfigMap"):
        assert not [k for k in config.get("data", {}) if "KEY" in k or "PASSWORD" in k]
    assert not of_kind(objects, "Secret"), "secrets are created by the operator, not shipped"
    for path in MANIFESTS:
        assert "sk-ant" not in path.read_text(), path.name


# --- scaling ---------------------------------------------------------------------------

def test_replica_bounds_and_hpa_behaviour(objects: list[Obj]) -> None:
    for deployment in workers(objects).values():
        assert "replicas" not in deployment["spec"], \
            f"{name(deployment)}: the HPA owns the count; a re-apply must not reset it"
    for obj in of_kind(objects, "ScaledObject"):
        spec = obj["spec"]
        low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
        assert isinstance(low, int) and isinstance(high, int)
        assert 1 <= low <= high, name(obj)
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        for direction in ("scaleUp", "scaleDown"):
            rules = behavior[direction]
            assert rules["policies"], f"{name(obj)} {direction}"
            assert rules.get("selectPolicy", "Max") in {"Max", "Min"}
            for policy in rules["policies"]:
                assert policy["type"] in {"Pods", "Percent"}
                assert policy["value"] >= 1 and 1 <= policy["periodSeconds"] <= 1800
        # up quickly, down only after the demand has stayed low for a while
        assert behavior["scaleUp"].get("stabilizationWindowSeconds", 0) <= 60
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] > \
            behavior["scaleUp"].get("stabilizationWindowSeconds", 0)


def test_each_queue_scales_on_its_demand_per_pod(objects: list[Obj],
                                                 settings_of: SettingsOf) -> None:
    by_name = {name(d): (q, d) for q, d in workers(objects).items()}
    for obj in of_kind(objects, "ScaledObject"):
        queue, deployment = by_name[obj["spec"]["scaleTargetRef"]["name"]]
        (trigger,) = obj["spec"]["triggers"]
        # not the redis scaler: one list's length misses the other priorities' lists and
        # every message a worker has taken
        assert trigger["type"] == "prometheus", name(obj)
        meta = trigger["metadata"]
        assert meta["serverAddress"].startswith(("http://", "https://"))
        selectors = re.findall(r"farm_queue_demand\{([^}]*)\}", meta["query"])
        assert selectors == [f'queue="{queue}"'], f"{name(obj)}: {meta['query']}"
        # no series (the exporter down) must be an error, not a demand of 0
        assert meta.get("ignoreNullValues") == "false"
        settings = settings_of(containers(deployment)[0])
        policy = settings.slot_policy((queue,), 2000)  # FARM_SLOTS, or the queue's own
        assert not policy.fixed, f"{queue}: its slots should be elastic"
        assert float(meta["threshold"]) == pytest.approx(policy.max * policy.up_at), \
            f"{name(obj)}: threshold = the slots' max x up_at"


# --- the exporter ------------------------------------------------------------------------

def test_the_exporter_is_served_and_scraped(objects: list[Obj], settings_of: SettingsOf) -> None:
    deployment = exporter(objects)
    (container,) = containers(deployment)
    options = parsed(exporter_command, argv(container)[2:])
    assert options["host"] == "0.0.0.0"
    assert port_number(container, "metrics") == options["port"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == options["port"]
    settings_of(container)  # its configuration is valid too
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = [s for s in of_kind(objects, "Service")
                if matches(s["spec"]["selector"], labels)]
    assert len(services) == 1
    (service,) = services
    for other in workers(objects).values():
        assert not matches(service["spec"]["selector"],
                           other["spec"]["template"]["metadata"]["labels"])
    assert [port_number(container, p["targetPort"]) for p in service["spec"]["ports"]] == \
        [options["port"]]


# --- names --------------------------------------------------------------------------------

def test_every_metric_named_is_exported(objects: list[Obj]) -> None:
    queries = [t["metadata"]["query"] for o in of_kind(objects, "ScaledObject")
               for t in o["spec"]["triggers"]]
    in_queries = {n for q in queries for n in re.findall(r"\bfarm_[a-z_]+", q)}
    assert in_queries  # each query names a farm metric
    in_text = {n for p in MANIFESTS for n in re.findall(r"\bfarm_[a-z_]+", p.read_text())}
    assert in_queries | in_text <= exported_names(), \
        f"not exported: {sorted((in_queries | in_text) - exported_names())}"


def test_every_farm_variable_is_a_setting(objects: list[Obj]) -> None:
    known = {f"FARM_{field.upper()}" for field in Settings.model_fields}
    named = {n for p in (*MANIFESTS, KUSTOMIZATION)
             for n in re.findall(r"\bFARM_[A-Z0-9_]+\b", p.read_text())}
    used = set()
    for config in of_kind(objects, "ConfigMap"):
        used |= set(config.get("data", {}))
    for deployment in of_kind(objects, "Deployment"):
        for container in containers(deployment):
            used |= {e["name"] for e in container.get("env", ())}
    used = {n for n in used if n.startswith("FARM_")}
    assert used  # the manifests configure the farm through its settings
    assert named | used <= known, f"not a setting: {sorted((named | used) - known)}"
    # what the pods need, set explicitly (json: FARM_SLOTS is the policy the threshold uses)
    config = environment(containers(next(iter(workers(objects).values())))[0], objects)
    for var in ("FARM_BROKER_URL", "FARM_DATABASE_URL", "FARM_HEALTH_PORT", "FARM_SLOTS",
                "FARM_SHUTDOWN_GRACE_S", "FARM_WORKER_MAX_RSS_MB"):
        assert var in config, var
    assert isinstance(json.loads(config["FARM_SLOTS"]), dict)
