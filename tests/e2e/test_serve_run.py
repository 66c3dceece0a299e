"""What an operator does: `serve run configs/test.yaml` from the command line, then curl-like requests."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, png_bytes
from tests.integration.conftest import place_test_weights
from tests.support import scenes
from tests.support.reference import TEST_CONFIG
from tests.support.serve_run import free_port, serve_run

STARTING_PHOTO = png_bytes(scenes.make_scenes(seed=30, count=1, height=64, width=64)[0].image)
STARTING_ANSWERS: list[tuple[int, str]] = []  # (status, content type) of requests sent while the service started


def send_while_starting(client: httpx.Client) -> None:
    try:
        answer = client.post("/v1/remove", params={"tier": "fast"}, content=STARTING_PHOTO)
    except httpx.TransportError:  # nothing listens yet
        return
    STARTING_ANSWERS.append((answer.status_code, answer.headers.get("content-type", "")))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, segmenting_weights: Path) -> Iterator[str]:
    weights_dir = place_test_weights(tmp_path_factory, segmenting_weights)
    log = tmp_path_factory.mktemp("serve-run") / "serve.log"
    with serve_run(TEST_CONFIG, weights_dir, log, watch=send_while_starting) as served:
        yield served.url


def test_requests_while_it_starts_are_told_to_come_again(served: str) -> None:
    """Serve's proxy answers a plain-text 404 for some seconds after it starts (the app's route is not there yet):
    the client and CLI, which retry 503s, gave up on those. Every answer while starting is a JSON 503 (or the
    image's 200, once its tier is up)."""
    assert STARTING_ANSWERS, "no request was answered while the service started"
    assert 503 in {status for status, _ in STARTING_ANSWERS}, STARTING_ANSWERS  # it was asked while starting
    assert {status for status, _ in STARTING_ANSWERS} <= {503, 200}, STARTING_ANSWERS
    assert all(kind == "application/json" for status, kind in STARTING_ANSWERS if status == 503), STARTING_ANSWERS


def test_serve_run_config_serves_every_tier(served: str) -> None:
    scene = scenes.make_scenes(seed=31, count=1, height=128, width=160)[0]
    with httpx.Client(base_url=served, timeout=60) as client:
        tiers = client.get("/v1/tiers").json()
        assert [t["tier"] for t in tiers] == ["fast", "balanced", "quality"] and all(t["ready"] for t in tiers)
        for tier in ("fast", "balanced", "quality"):
            response = client.post(
                "/v1/remove",
                params={"tier": tier, "effect": "mask"},
                content=png_bytes(scene.image),
                headers={"content-type": "image/png"},
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-tier"] == tier and response.headers["x-weights"] == "test-segmenting.pth"
        default = client.post("/v1/remove", content=png_bytes(scene.image))
        assert default.headers["x-tier"] == "balanced" and default.headers["content-type"] == "image/png"


def test_serve_sh_refuses_a_busy_port_and_a_bad_config(tmp_path: Path) -> None:
    """Serve's proxy binds with SO_REUSEPORT: a second service on a busy port would start and share it. The
    script checks first and stops with what to do; as it does for a config the cluster would not build."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = yaml.safe_load(TEST_CONFIG.read_text())
        config["http_options"]["port"] = taken.getsockname()[1]
        path = tmp_path / "busy.yaml"
        path.write_text(yaml.safe_dump(config))
        stamp = ROOT / ".venv" / ".bgserve-setup"
        stamped = stamp.stat().st_mtime_ns if stamp.exists() else None  # .venv made by scripts/setup.sh
        env = dict(os.environ)  # serve.sh's own extras (cpu): the dev venv the tests run in has them
        done = subprocess.run(
            [str(ROOT / "scripts" / "serve.sh"), str(path)], env=env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"port {config['http_options']['port']} on 127.0.0.1 is already in use" in done.stderr
    assert "Starting" not in done.stdout
    config["applications"][0]["args"]["tiers"]["fast"]["runtime"] = "openvno"  # and a config it would not build
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [str(ROOT / "scripts" / "serve.sh"), str(path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "tiers.fast.runtime: unknown runtime 'openvno'" in done.stderr, done.stderr
    assert "Starting" not in done.stdout
    assert stamped is None or stamp.stat().st_mtime_ns == stamped, "serve.sh set the tests' venv up again"


def test_serve_sh_passes_the_options_after_the_config_to_the_runner(tmp_path: Path) -> None:
    """`scripts/serve.sh my.yaml --min-drain-s 10`: what follows the config reaches deployments/run.py (a bad value
    is the runner's own usage error, after the script's checks passed)."""
    config = yaml.safe_load((ROOT / "configs" / "try.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=free_port())
    path = tmp_path / "try.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [str(ROOT / "scripts" / "serve.sh"), str(path), "--min-drain-s", "soon"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Starting" in done.stdout and "--min-drain-s: invalid float value: 'soon'" in done.stderr, done.stderr
    # Options before the config would have served configs/cpu.yaml, the config taken for an argument of Serve's.
    done = subprocess.run(
        [str(ROOT / "scripts" / "serve.sh"), "--min-drain-s", "10", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "the config goes first" in done.stderr, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("serve_config.yaml", "gpu"),
        ("configs/cpu.yaml", "cpu"),
        ("configs/try.yaml", "cpu"),
        ("configs/test.yaml", "cpu"),
    ],
)
def test_serve_sh_installs_the_gpu_extra_for_a_config_that_asks_for_gpus(config: str, extra: str) -> None:
    """The L4 config served with the cpu extra had no NVML, so no GPU metrics, and no onnxruntime-gpu."""
    assert extras_for(ROOT / config) == extra


def test_only_a_live_nonzero_num_gpus_asks_for_the_gpu_extra(tmp_path: Path) -> None:
    cases = {
        "ray_actor_options: {num_gpus: 0.25, num_cpus: 0.5}": "gpu",
        "    num_gpus: 1": "gpu",
        "ray_actor_options: {num_gpus: 0}": "cpu",
        "num_gpus: 0.0": "cpu",
        "# ray_actor_options: {num_gpus: 1}": "cpu",
        "num_cpus: 1  # num_gpus: 1 would need a GPU": "cpu",
    }
    for line, extra in cases.items():
        (tmp_path / "c.yaml").write_text(f"applications: []\n{line}\n")
        assert extras_for(tmp_path / "c.yaml") == extra, line


def extras_for(config: Path) -> str:
    """serve.sh's own function, run alone (it would set up a venv)."""
    script = f'eval "$(sed -n "/^extras_for()/,/^}}/p" {ROOT}/scripts/serve.sh)"; extras_for "$1"'
    done = subprocess.run(["bash", "-c", script, "bash", str(config)], capture_output=True, text=True, check=True)
    return done.stdout.strip()
