"""The alert rules: valid for Prometheus, each one firing on the series it watches (promtool's
rule unit tests), the same rules in compose and Kubernetes, on metrics that exist."""

import re
import subprocess
from pathlib import Path

import yaml

from tests.deploy.support import ROOT, tool

PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = {
    "ChoreoServiceDown",
    "ChoreoDeadLettersGrowing",
    "ChoreoConsumerLagHigh",
    "ChoreoStepFailureRateHigh",
    "ChoreoTransformStreamLagHigh",
}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    result = subprocess.run(
        [str(tool("promtool")), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_rules_are_valid_and_each_alert_fires_when_it_should() -> None:
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")
    # The compose config loads them (rule_files, relative to it).
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")


def test_kubernetes_gets_the_same_rules(tmp_path: Path) -> None:
    rule = yaml.safe_load((ROOT / "k8s/base/monitoring/prometheusrule.yaml").read_text())
    compose = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == compose["groups"]
    # What the Operator hands Prometheus is a rule file of these groups: promtool checks it.
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", str(extracted))
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == ALERTS


def test_every_metric_an_alert_reads_is_in_the_catalogue() -> None:
    catalogue = (ROOT / "docs" / "metrics.md").read_text()
    compose = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    for group in compose["groups"]:
        for rule in group["rules"]:
            for metric in set(re.findall(r"\bchoreo_[a-z_]+", rule["expr"])):
                assert f"`{metric}`" in catalogue, (rule["alert"], metric)
