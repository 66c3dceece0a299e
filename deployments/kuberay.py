"""The KubeRay ``RayService`` for bgserve, generated from ``serve_config.yaml`` so the two never disagree:

    python -m deployments.kuberay > deploy/kuberay/rayservice.yaml

Its ``serveConfigV2`` is ``serve_config.yaml`` itself (what ``serve deploy`` would send), with the weights
directory the image uses. The cluster: a head with ``num-cpus: 0`` (only the control plane: no replica lands
there), Ray's metrics on port 8080 (KubeRay's convention, scraped by ``deploy/kuberay/podmonitor.yaml``), token
authentication, and one worker group of NVIDIA L4 nodes (one GPU each; the three tiers share it through their
fractional ``num_gpus``). Every pod runs the image built from ``Dockerfile``, with the proxy guard on.
A test fails when the checked-in manifest drifts from this builder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RAY_VERSION = "2.60.0"
# Built from the Dockerfile and tagged with the release: a new tag changes the manifest, which makes KubeRay roll
# out a new cluster. (A reused tag, `latest`, changes nothing here: with IfNotPresent, nodes that cached the old
# image keep it while new nodes pull the new one, and the cluster runs two versions of the code.)
IMAGE = f"bgserve:{version('bgserve')}"
WEIGHTS_DIR = "/models"  # the Dockerfile's BGSERVE_WEIGHTS_DIR: baked in, or a volume mounted there
# On every Ray pod of this service: deploy/kuberay/podmonitor.yaml scrapes the pods that carry it, and no other
# Ray cluster's (KubeRay's own labels name the generated cluster, bgserve-<suffix>, not the RayService). Not
# app.kubernetes.io/name: KubeRay selects its head Service's pods by that label (its value `kuberay`), and a pod
# template's own value would leave the Service with no pod (kuberay#2648).
POD_LABELS = {"app.kubernetes.io/part-of": "bgserve"}
ENV = [
    {"name": "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "value": "deployments.proxy_guard:middlewares"},
    {"name": "BGSERVE_WEIGHTS_DIR", "value": WEIGHTS_DIR},
    # A replica that failed its health checks is stopped at once, not drained for graceful_shutdown_timeout_s.
    {"name": "RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS", "value": "1"},
]


def serve_config(path: Path = ROOT / "serve_config.yaml") -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    for app in config["applications"]:
        app["args"]["weights_dir"] = WEIGHTS_DIR  # the app is built on the cluster: name the directory there
    return config


def proxy_settings_hash(config: dict[str, Any]) -> str:
    """A digest of what Serve applies only when its proxies start (``http_options``, ``proxy_location``): Ray
    ignores a change to them on a running cluster, with a warning in its log. In the pod templates' annotations,
    a change makes KubeRay build a new cluster instead."""
    settings = {key: config.get(key) for key in ("http_options", "grpc_options", "proxy_location")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def container(name: str, resources: dict[str, Any], ports: list[dict[str, Any]], image: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",  # a release's tag never changes: no pull at every start
        "env": ENV,
        "resources": {"limits": resources, "requests": resources},
        "ports": ports,
    }


def rayservice(image: str = IMAGE) -> dict[str, Any]:
    metrics_port = {"containerPort": 8080, "name": "metrics"}
    config = serve_config()
    annotations = {"bgserve/proxy-settings": proxy_settings_hash(config)}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "bgserve"},
        "spec": {
            "serveConfigV2": yaml.safe_dump(config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "authOptions": {"mode": "token"},  # KubeRay 1.5.1 or newer; it keeps the token in a Secret
                # Ray's autoscaler adds L4 nodes (up to maxReplicas) when Serve's autoscaling asks for replicas
                # that do not fit, and removes idle ones.
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0", "metrics-export-port": "8080"},
                    "template": {
                        "metadata": {"labels": dict(POD_LABELS), "annotations": dict(annotations)},
                        "spec": {
                            "containers": [
                                container(
                                    "ray-head",
                                    {"cpu": "2", "memory": "8Gi"},
                                    [
                                        {"containerPort": 6379, "name": "gcs-server"},
                                        {"containerPort": 8265, "name": "dashboard"},
                                        {"containerPort": 8000, "name": "serve"},
                                        metrics_port,
                                    ],
                                    image,
                                )
                            ]
                        },
                    },
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "l4",
                        "replicas": 1,
                        "minReplicas": 1,
                        "maxReplicas": 4,
                        "rayStartParams": {"metrics-export-port": "8080"},
                        "template": {
                            "metadata": {"labels": dict(POD_LABELS), "annotations": dict(annotations)},
                            "spec": {
                                "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                                "containers": [
                                    container(
                                        "ray-worker",
                                        # Fits a g2-standard-8 (8 vCPU, 32 GB) once GKE's reservations and
                                        # daemon sets take theirs (~28 GiB allocatable): 28Gi would not schedule.
                                        {"cpu": "7", "memory": "24Gi", "nvidia.com/gpu": "1"},
                                        [{"containerPort": 8000, "name": "serve"}, metrics_port],
                                        image,
                                    )
                                ],
                            },
                        },
                    }
                ],
            },
        },
    }


class _BlockStrings(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as YAML literal blocks, readable as the config they are; every value
    written out where it is (no &id001 anchors: a hand edit of one group's env would change the other's too)."""

    def ignore_aliases(self, data: object) -> bool:
        return True


_BlockStrings.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def manifest(image: str = IMAGE) -> str:
    header = "# Generated by `python -m deployments.kuberay` from serve_config.yaml: edit those, not this file.\n"
    return header + yaml.dump(rayservice(image), Dumper=_BlockStrings, sort_keys=False, width=120)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=IMAGE, help=f"the image every pod runs (default {IMAGE})")
    print(manifest(parser.parse_args().image), end="")
