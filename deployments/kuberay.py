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

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RAY_VERSION = "2.60.0"
IMAGE = "bgserve:latest"  # built from the Dockerfile; push it where the cluster pulls from
WEIGHTS_DIR = "/models"  # the Dockerfile's BGSERVE_WEIGHTS_DIR: baked in, or a volume mounted there
ENV = [
    {"name": "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "value": "deployments.proxy_guard:middlewares"},
    {"name": "BGSERVE_WEIGHTS_DIR", "value": WEIGHTS_DIR},
]


def serve_config(path: Path = ROOT / "serve_config.yaml") -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    for app in config["applications"]:
        app["args"]["weights_dir"] = WEIGHTS_DIR  # the app is built on the cluster: name the directory there
    return config


def container(name: str, resources: dict[str, Any], ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",  # a `latest` tag would make Kubernetes pull it on every start
        "env": ENV,
        "resources": {"limits": resources, "requests": resources},
        "ports": ports,
    }


def rayservice() -> dict[str, Any]:
    metrics_port = {"containerPort": 8080, "name": "metrics"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "bgserve"},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "authOptions": {"mode": "token"},  # KubeRay 1.5.1 or newer; it keeps the token in a Secret
                # Ray's autoscaler adds L4 nodes (up to maxReplicas) when Serve's autoscaling asks for replicas
                # that do not fit, and removes idle ones.
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0", "metrics-export-port": "8080"},
                    "template": {
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
                                )
                            ]
                        }
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
                            "spec": {
                                "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                                "containers": [
                                    container(
                                        "ray-worker",
                                        # Fits a g2-standard-8 (8 vCPU, 32 GB) once GKE's reservations and
                                        # daemon sets take theirs (~28 GiB allocatable): 28Gi would not schedule.
                                        {"cpu": "7", "memory": "24Gi", "nvidia.com/gpu": "1"},
                                        [{"containerPort": 8000, "name": "serve"}, metrics_port],
                                    )
                                ],
                            }
                        },
                    }
                ],
            },
        },
    }


class _BlockStrings(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as YAML literal blocks, readable as the config they are."""


_BlockStrings.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def manifest() -> str:
    header = "# Generated by `python -m deployments.kuberay` from serve_config.yaml: edit those, not this file.\n"
    return header + yaml.dump(rayservice(), Dumper=_BlockStrings, sort_keys=False, width=120)


if __name__ == "__main__":
    print(manifest(), end="")
