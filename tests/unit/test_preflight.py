"""Checking a config before `serve run` / `serve deploy` (deployments/preflight.py): what Serve or our builder would
refuse, by config path, and where the service will answer. (The busy-port check: tests/unit/test_admission.py.)"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.preflight import config_problems
from tests.conftest import ROOT

CPU = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())


def args(config: dict[str, Any]) -> dict[str, Any]:
    return config["applications"][0]["args"]


@pytest.mark.parametrize("name", ["configs/cpu.yaml", "configs/try.yaml", "configs/test.yaml", "serve_config.yaml"])
def test_the_shipped_configs_pass(name: str) -> None:
    assert config_problems(yaml.safe_load((ROOT / name).read_text())) == []


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        (lambda c: args(c).update(defualt_tier="fast"), "args: defualt_tier: Extra inputs are not permitted"),
        (lambda c: args(c)["tiers"]["fast"].update(runtime="openvno"), "tiers.fast.runtime: unknown runtime 'openvno'"),
        (
            lambda c: args(c)["tiers"]["fast"].update(deployment={"max_ongoing_request": 3}),
            "tiers.fast.deployment: Deployment.options() got an unexpected keyword argument 'max_ongoing_request'",
        ),
        (lambda c: args(c)["tiers"].update(ultra={}), "Input should be 'fast', 'balanced' or 'quality'"),
        (
            lambda c: c["applications"][0]["deployments"][0].update(num_replicas=0),
            "Serve's config schema: applications.0.deployments.0.num_replicas",
        ),
        (  # Serve would fail the deploy: "Deployment 'qualty' does not exist"
            lambda c: c["applications"][0]["deployments"].append({"name": "qualty", "num_replicas": 2}),
            "deployments: 'qualty' is not one of this application's deployments (balanced, fast, ingress, quality)",
        ),
    ],
)
def test_a_mistake_is_named_by_its_config_path(mistake: Callable[[dict[str, Any]], None], expected: str) -> None:
    config = copy.deepcopy(CPU)
    mistake(config)
    (problem,) = config_problems(config)
    assert expected in problem, problem


def tier_overrides(config: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [e for e in config["applications"][0]["deployments"] if e["name"] == name]
    return entry  # type: ignore[no-any-return]


def test_batching_is_checked_on_the_values_in_force() -> None:
    """The check read `args` only: a config whose `deployments:` entry set a batch of 2 beside max_ongoing_requests 2
    was refused for the args' default 4, and a batch of 8 beside max_ongoing_requests 4 passed."""
    config = copy.deepcopy(CPU)
    args(config)["tiers"]["fast"]["deployment"]["max_ongoing_requests"] = 2
    tier_overrides(config, "fast")["user_config"] = {"max_batch_size": 2, "batch_wait_timeout_s": 0.5}
    assert config_problems(config) == []
    tier_overrides(config, "fast")["user_config"]["max_batch_size"] = 8
    tier_overrides(config, "fast")["max_ongoing_requests"] = 4  # Serve's option, overridden in the list too
    (problem,) = config_problems(config)
    assert "tier fast: max_ongoing_requests (4) < max_batch_size (8)" in problem, problem
    del tier_overrides(config, "fast")["user_config"]  # then args' batching (4) is in force: fits 4
    assert config_problems(config) == []
    tier_overrides(config, "fast")["user_config"] = {"max_batch_size": 0}
    (problem,) = config_problems(config)
    assert "tier fast: user_config: max_batch_size" in problem, problem


def test_the_command_prints_where_the_service_answers_or_what_is_wrong(tmp_path: Path) -> None:
    def preflight(path: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "deployments.preflight", "--config-only", str(path)]
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)

    config = copy.deepcopy(CPU)
    config["http_options"]["port"] = 8123
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(config))
    done = preflight(good)
    assert done.returncode == 0 and done.stdout == "http://localhost:8123\n", done.stderr
    args(config)["defualt_tier"] = "fast"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    done = preflight(bad)
    assert done.returncode == 1 and done.stdout == ""
    assert f"error: {bad}: applications[0] (bgserve) args: defualt_tier" in done.stderr
    done = preflight(tmp_path / "missing.yaml")  # said in one line, as bgserve-weights says it, not a traceback
    assert done.returncode == 1 and done.stderr.startswith("error: cannot read ") and "Traceback" not in done.stderr
