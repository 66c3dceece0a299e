import re
from importlib.metadata import version

import yaml

from deployments.kuberay import manifest, proxy_settings_hash, serve_config
from serve_app.schemas import AppConfig
from tests.conftest import ROOT


def test_the_checked_in_rayservice_is_generated_from_serve_config() -> None:
    """deploy/kuberay/rayservice.yaml is `python -m deployments.kuberay`'s output: edit serve_config.yaml (or the
    builder) and regenerate; a manifest that drifts fails here."""
    assert (ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text() == manifest()
    assert not re.search(r"[&*]id\d", manifest())  # anchors: a hand edit of one pod group's would change the other's


def test_the_rayservice_serves_serve_config_with_no_replica_on_the_head() -> None:
    service = yaml.safe_load(manifest())
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert served == serve_config()
    for app in served["applications"]:
        AppConfig.model_validate(app["args"])  # what the cluster will build
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["enableInTreeAutoscaling"] is True  # else maxReplicas never adds a node
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for spec in (cluster["headGroupSpec"], workers):
        (container,) = spec["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "deployments.proxy_guard:middlewares"
        assert env["RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS"] == "1"  # not drained for its graceful timeout
        assert {"containerPort": 8080, "name": "metrics"} in container["ports"]
        assert container["imagePullPolicy"] == "IfNotPresent"
        assert container["image"] == f"bgserve:{version('bgserve')}"  # a release's own tag, never latest


def test_a_change_serve_applies_only_at_start_makes_kubernetes_build_a_new_cluster() -> None:
    """Ray ignores new http_options or proxy_location on a running cluster (a warning in its log): a new
    request_timeout_s would never apply. Their digest is in the pod templates, so KubeRay builds a new cluster;
    a change to the application alone (applied in place) leaves it as it is."""
    config = serve_config()
    digest = proxy_settings_hash(config)
    service = yaml.safe_load(manifest())
    cluster = service["spec"]["rayClusterConfig"]
    for spec in (cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]):
        assert spec["template"]["metadata"]["annotations"] == {"bgserve/proxy-settings": digest}
    assert proxy_settings_hash({**config, "http_options": {**config["http_options"], "request_timeout_s": 1}}) != digest
    assert proxy_settings_hash({**config, "proxy_location": "HeadOnly"}) != digest
    assert proxy_settings_hash({**config, "applications": []}) == digest
    other = yaml.safe_load(manifest("registry.example/bgserve:9.9.9"))
    for spec in (
        other["spec"]["rayClusterConfig"]["headGroupSpec"],
        other["spec"]["rayClusterConfig"]["workerGroupSpecs"][0],
    ):
        assert spec["template"]["spec"]["containers"][0]["image"] == "registry.example/bgserve:9.9.9"


def test_the_dockerfile_matches_the_ray_we_test_and_loads_the_proxy_guard() -> None:
    """The image is not built here (no registry for its base image): what can drift from the tested code is
    pinned here. Its base image is the Ray version pyproject pins and the tests run, for this Python; it installs
    the gpu extra and starts Ray with the proxy guard and the weights folder the manifest mounts."""
    import sys

    import ray

    from deployments.proxy_guard import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE

    dockerfile = (ROOT / "Dockerfile").read_text()
    base = f"FROM rayproject/ray:{ray.__version__}-py{sys.version_info.major}{sys.version_info.minor}-gpu"
    assert base in dockerfile.splitlines()
    assert f'"ray[serve]=={ray.__version__}"' in (ROOT / "pyproject.toml").read_text()
    assert "pip install --no-cache-dir" in dockerfile and '".[gpu]"' in dockerfile  # the gpu extra
    assert f"{PROXY_CALLBACK_VARIABLE}={PROXY_CALLBACK}" in dockerfile
    assert "BGSERVE_WEIGHTS_DIR=/models" in dockerfile
    assert "RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS=1" in dockerfile  # as the manifest's env
    # The image runs as user ray: the weights folder is made its own before anything downloads into it.
    lines = dockerfile.splitlines()
    owned = lines.index("RUN mkdir -p /models && chown ray:users /models")
    assert lines[owned - 1] == "USER root" and lines[owned + 1] == "USER ray"
    assert owned < next(i for i, line in enumerate(lines) if "bgserve-weights fetch" in line)
    # torch as scripts/setup.sh pins it; the dashboard behind a token (ray start alone leaves auth off).
    pins = re.findall(r'"(torch(?:vision)?==[^"]+)"', (ROOT / "scripts" / "setup.sh").read_text())
    assert len(pins) == 2 and all(f'"{pin}"' in dockerfile for pin in pins)
    command = next(line for line in lines if line.startswith("CMD"))
    assert "export RAY_AUTH_MODE=token && ray get-auth-token --generate >/dev/null && ray start --head" in command
    # docker stop's SIGTERM reaches the runner itself (exec), which drains the service before Serve shuts down.
    assert command.endswith('&& exec python -m deployments.run serve_config.yaml"]')
    assert not any(line.startswith("STOPSIGNAL") for line in lines)
    # The headless OpenCV, as scripts/setup.sh keeps it: the image has no libGL for opencv-python's cv2.
    assert "pip uninstall -y opencv-python" in dockerfile and '"opencv-python-headless==$headless"' in dockerfile
    # rgba's kernels compiled at build, as scripts/setup.sh compiles them: not in each container's first start.
    warm_up = 'python -c "from serve_app.effects import warm_up_matting; warm_up_matting()"'
    assert f"RUN {warm_up}" in lines and warm_up in (ROOT / "scripts" / "setup.sh").read_text()
    copied = {line.split()[-1] for line in dockerfile.splitlines() if line.startswith("COPY")}
    assert {"serve_app", "deployments", "configs", "./"} <= copied  # the packages the replicas import


def test_the_podmonitor_scrapes_this_services_pods_only() -> None:
    """It scraped every Ray pod in every namespace: another Ray cluster's Serve metrics were merged into the board."""
    monitor = yaml.safe_load((ROOT / "deploy" / "kuberay" / "podmonitor.yaml").read_text())
    assert "namespaceSelector" not in monitor["spec"]  # its own namespace, the RayService's
    wanted = monitor["spec"]["selector"]["matchLabels"]
    cluster = yaml.safe_load(manifest())["spec"]["rayClusterConfig"]
    for spec in (cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]):
        labels = {**spec["template"]["metadata"]["labels"], "ray.io/is-ray-node": "yes"}  # KubeRay adds the last
        assert wanted.items() <= labels.items()
    assert set(wanted) - {"ray.io/is-ray-node"}  # something of this service's own, not only KubeRay's label
    # Never a label KubeRay selects its own Services' pods by: its head Service selects app.kubernetes.io/name
    # (value kuberay), and a template that set it would leave that Service with no pod (kuberay#2648).
    for spec in (cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]):
        assert not set(spec["template"]["metadata"]["labels"]) & {"app.kubernetes.io/name", "ray.io/cluster"}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    # jobLabel names a pod label whose value becomes the job; one no pod carries leaves the job "<namespace>/<name>".
    assert monitor["spec"]["jobLabel"] in wanted
