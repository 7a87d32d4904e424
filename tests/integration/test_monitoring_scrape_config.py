"""deploy/monitoring/prometheus-scrape-config.yaml through the real Prometheus (Debian's).

Debian builds Prometheus without Kubernetes discovery, so the pods KAITO runs are handed
over as the target groups ``role: pod`` discovery would yield for them
(`kubernetes_sd.with_static_discovery`); everything else in the file is used as is:
promtool checks it, and Prometheus's own relabeling decides which targets are scraped
and with which labels.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.kubernetes_sd import (
    MONITORING,
    kaito_pods,
    scrape_targets,
    with_static_discovery,
)
from tests.integration.prometheus import promtool_binary, run_prometheus

Obj = dict[str, Any]


def deploy_config() -> Obj:
    return dict(yaml.safe_load((MONITORING / "prometheus-scrape-config.yaml").read_text()))


def promtool_check(config: Obj, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run(
        [str(promtool_binary()), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_promtool_accepts_the_scrape_config(tmp_path: Path) -> None:
    config = with_static_discovery(deploy_config(), kaito_pods())
    proc = promtool_check(config, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("field", "value"),
    [("action", "keepp"), ("regex", "(unclosed")],
)
def test_promtool_rejects_a_broken_relabel_rule(tmp_path: Path, field: str, value: str) -> None:
    """The check above is not vacuous: promtool reads the relabel rules."""
    config = with_static_discovery(deploy_config(), kaito_pods())
    config["scrape_configs"][0]["relabel_configs"][0][field] = value
    proc = promtool_check(config, tmp_path)
    assert proc.returncode != 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_exactly_the_metrics_ports_of_the_pods_kaito_runs(
    tmp_path: Path,
) -> None:
    pods = kaito_pods()
    config = deploy_config()
    expected = scrape_targets(config, pods)  # the unit tests pin this down
    with run_prometheus(with_static_discovery(config, pods), tmp_path / "prometheus") as prom:
        want = sum(len(v) for v in expected.values())
        deadline = time.monotonic() + 30  # discovery reaches the scrape pools after ~5 s
        while True:
            data = prom.api("targets", state="any")
            if len(data["activeTargets"]) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    active: dict[str, list[dict[str, str]]] = {}
    for target in data["activeTargets"]:
        active.setdefault(target["labels"]["job"], []).append(dict(target["labels"]))
    assert active == expected, data["activeTargets"]
    # Every other port of those pods (health probes, the webhook) was seen and dropped.
    dropped = {t["discoveredLabels"]["__address__"] for t in data["droppedTargets"]}
    assert {"10.0.0.1:8081", "10.0.0.2:8081", "10.0.0.2:9443"} <= dropped, sorted(dropped)
