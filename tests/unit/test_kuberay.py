import yaml

from deployments.kuberay import manifest, serve_config
from serve_app.schemas import AppConfig
from tests.conftest import ROOT


def test_the_checked_in_rayservice_is_generated_from_serve_config() -> None:
    """deploy/kuberay/rayservice.yaml is `python -m deployments.kuberay`'s output: edit serve_config.yaml (or the
    builder) and regenerate; a manifest that drifts fails here."""
    assert (ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text() == manifest()


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
        assert {"containerPort": 8080, "name": "metrics"} in container["ports"]
        assert container["imagePullPolicy"] == "IfNotPresent"


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
    assert 'pip install --no-cache-dir ".[gpu]"' in dockerfile
    assert f"{PROXY_CALLBACK_VARIABLE}={PROXY_CALLBACK}" in dockerfile
    assert "BGSERVE_WEIGHTS_DIR=/models" in dockerfile
    copied = {line.split()[-1] for line in dockerfile.splitlines() if line.startswith("COPY")}
    assert {"serve_app", "deployments", "configs", "./"} <= copied  # the packages the replicas import
