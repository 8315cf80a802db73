"""k8s/: every overlay renders offline and validates against the Kubernetes JSON schemas, and
every workload has probes, limits, a restricted security context and its secrets.

The custom resources (KEDA's ScaledObject, the Prometheus Operator's ServiceMonitor) have no
schema in kubernetes-validate; they are checked here for what Choreo relies on instead."""

import base64
import subprocess
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no type information shipped
import pytest
import yaml

from shared.access import CONSOLE
from shared.subjects import SERVICES, STREAMS
from tests.deploy.support import ROOT, tool

KUBERNETES_VERSION = "1.32.0"
OVERLAYS = ["dev", "prod"]
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
# Not autoscaled, on purpose (k8s/base/autoscaling/scaledobjects.yaml says why).
# The lake lander (store) and live fraud scoring (partitioned by card) do not scale; their
# workflow steps do, as the Deployments `store-steps` and `fraud-steps`.
NOT_AUTOSCALED = {"store", "fraud"}
STEP_REPLICAS = {
    "store-steps": "CHOREO_LANDER_ENABLED",
    "fraud-steps": "CHOREO_FRAUD_SCORING_ENABLED",
}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}

Manifest = dict[str, Any]


def render(overlay: str) -> list[Manifest]:
    kubectl = tool("kubectl")
    result = subprocess.run(
        [str(kubectl), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(request.param)


def by_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def test_every_resource_matches_the_kubernetes_schema(manifests: list[Manifest]) -> None:
    problems = []
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {exc.message}")
    assert problems == []


def test_every_workload_is_probed_limited_and_restricted(manifests: list[Manifest]) -> None:
    for manifest in manifests:
        if manifest["kind"] not in WORKLOADS:
            continue
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        pod = manifest["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            limits = container["resources"]["limits"]
            assert {"cpu", "memory"} <= set(limits), name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            if manifest["kind"] != "Job":
                assert "readinessProbe" in container, name
                assert "livenessProbe" in container, name


def test_each_service_runs_its_module_with_its_probes_and_secrets(
    manifests: list[Manifest],
) -> None:
    deployments = by_kind(manifests, "Deployment")
    secrets = {s["metadata"]["name"] for s in manifests if s["kind"] == "Secret"}
    for service in SERVICES:
        container = deployments[service]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", f"services.{service}"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        # Liveness on the port answered from a thread (CHOREO_HEALTH_PORT in the ConfigMap).
        assert container["livenessProbe"]["httpGet"]["port"] == "health"
        assert {"name": "health", "containerPort": 8001} in container["ports"]
        refs = [r["secretRef"]["name"] for r in container["envFrom"] if "secretRef" in r]
        assert len(refs) == 1, refs
        assert refs[0].startswith(f"choreo-{service}"), refs
        assert not any(
            r["secretRef"].get("optional") for r in container["envFrom"] if "secretRef" in r
        )
        password = next(e for e in container["env"] if e["name"] == "CHOREO_NATS_PASSWORD")
        assert password["valueFrom"]["secretKeyRef"]["key"] == f"NATS_{service.upper()}_PASSWORD"
        if secrets:  # dev generates them; prod expects them created out of band
            assert refs[0] in secrets


def test_the_console_reads_the_services_as_its_own_user(manifests: list[Manifest]) -> None:
    console = by_kind(manifests, "Deployment")[CONSOLE]
    container = console["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "services.console"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["CHOREO_NATS_USER"] == CONSOLE
    assert env["CHOREO_NATS_PASSWORD"]["secretKeyRef"]["key"] == "NATS_CONSOLE_PASSWORD"
    services = by_kind(manifests, "Service")
    for service in SERVICES:
        assert env[f"CHOREO_{service.upper()}_URL"] == f"http://{service}:8000"
        assert service in services
    refs = [r["secretRef"]["name"] for r in container["envFrom"] if "secretRef" in r]
    assert len(refs) == 1
    assert refs[0].startswith("choreo-console"), refs  # dev's generated name has a hash
    secrets = {s["metadata"]["name"]: s for s in manifests if s["kind"] == "Secret"}
    if secrets:  # dev: its key for ingest is one ingest accepts
        key = _secret_value(secrets, "choreo-console", "CHOREO_CONSOLE_INGEST_API_KEY")
        accepted = _secret_value(secrets, "choreo-ingest", "CHOREO_INGEST_API_KEYS")
        assert key in accepted.split(",")
        assert _secret_value(secrets, "choreo-nats", "NATS_CONSOLE_PASSWORD")
    # Reachable: egress to the services' APIs and NATS, ingress from clients.
    policies = by_kind(manifests, "NetworkPolicy")
    egress = policies["console-to-services"]["spec"]["egress"]
    assert {p["port"] for rule in egress for p in rule["ports"]} == {8000, 8222}
    assert "clients-to-console" in policies


def _secret_value(secrets: dict[str, Manifest], prefix: str, key: str) -> str:
    secret = next(s for name, s in secrets.items() if name.startswith(prefix))
    return base64.b64decode(secret["data"][key]).decode()


def test_store_and_fraud_scale_their_steps_without_the_single_writers(
    manifests: list[Manifest],
) -> None:
    """`store-steps` and `fraud-steps` run the same module as store and fraud, with the
    lake lander or the live scoring switched off; the originals keep a fixed count."""
    deployments = by_kind(manifests, "Deployment")
    for name, switch in STEP_REPLICAS.items():
        service = name.removesuffix("-steps")
        steps = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        original = deployments[service]["spec"]["template"]["spec"]["containers"][0]
        assert steps["command"] == original["command"]
        assert steps["envFrom"] == original["envFrom"]
        assert {"name": switch, "value": "false"} in steps["env"]
        assert not any(e["name"] == switch for e in original["env"])
        assert deployments[service]["spec"]["replicas"] == 1


def test_nats_is_a_three_node_jetstream_cluster(manifests: list[Manifest]) -> None:
    nats = by_kind(manifests, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["volumeClaimTemplates"]
    config = next(
        m
        for m in manifests
        if m["kind"] == "ConfigMap" and m["metadata"]["name"].startswith("nats-config")
    )
    text = config["data"]["nats.conf"]
    assert "cluster {" in text
    assert "jetstream {" in text
    assert all(f"nats://nats-{i}.nats-headless:6222" in text for i in range(3))
    choreo_config = by_kind(manifests, "ConfigMap")["choreo-config"]
    assert choreo_config["data"]["CHOREO_STREAM_REPLICAS"] == "3"


def test_consumer_services_scale_on_their_jetstream_consumer_lag(manifests: list[Manifest]) -> None:
    deployments = by_kind(manifests, "Deployment")
    scaled = by_kind(manifests, "ScaledObject")
    streams = {spec.name for spec in STREAMS}
    assert set(scaled) == set(SERVICES) - NOT_AUTOSCALED | set(STEP_REPLICAS)
    for name, scaled_object in scaled.items():
        spec = scaled_object["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "nats-jetstream", name
            metadata = trigger["metadata"]
            assert metadata["stream"] in streams, name
            assert metadata["natsServerMonitoringEndpoint"].startswith("nats-headless."), name
            assert int(metadata["lagThreshold"]) > 0


# The least replicas each overlay keeps of what KEDA scales (its ScaledObject's minimum).
MIN_REPLICAS = {"dev": {}, "prod": {"ingest": 2, "audit": 2}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_alone_owns_the_replica_count_of_what_it_scales(overlay: str) -> None:
    """A Deployment with `spec.replicas` and a ScaledObject would have its count reset by
    every `kubectl apply` (and the overlay's minimum undercut by KEDA's)."""
    manifests = render(overlay)
    deployments = by_kind(manifests, "Deployment")
    scaled = by_kind(manifests, "ScaledObject")
    for scaled_object in scaled.values():
        target = scaled_object["spec"]["scaleTargetRef"]["name"]
        assert "replicas" not in deployments[target]["spec"], (overlay, target)
    for name in NOT_AUTOSCALED:
        assert deployments[name]["spec"]["replicas"] == 1, (overlay, name)
    minimums = {n: s["spec"]["minReplicaCount"] for n, s in scaled.items()}
    for name, least in MIN_REPLICAS[overlay].items():
        assert minimums[name] == least, (overlay, name)
    assert all(m == 1 for n, m in minimums.items() if n not in MIN_REPLICAS[overlay])


def test_every_pod_has_a_disruption_budget_and_traffic_is_denied_by_default(
    manifests: list[Manifest],
) -> None:
    budgets = [
        b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for b in manifests
        if b["kind"] == "PodDisruptionBudget"
    ]
    assert set(SERVICES) | set(STEP_REPLICAS) | {CONSOLE, "nats"} <= set(budgets)
    policies = by_kind(manifests, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny


def test_prometheus_scrapes_every_service(manifests: list[Manifest]) -> None:
    monitor = by_kind(manifests, "ServiceMonitor")["choreo-services"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = by_kind(manifests, "Service")
    scraped = {
        n for n, s in services.items() if selector.items() <= s["metadata"]["labels"].items()
    }
    assert scraped == set(SERVICES) | set(STEP_REPLICAS) | {CONSOLE}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
