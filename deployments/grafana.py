"""The Grafana dashboard for bgserve, built from the metric names in ``deployments/metrics.py`` and Serve's own.

    python -m deployments.grafana > configs/grafana/bgserve.json

The checked-in JSON is what operators import (Grafana: Dashboards > New > Import); a test fails when it drifts
from this builder, and another evaluates every expression in it against a real Prometheus scraping the service.
Panels are per tier (the ``tier`` variable; a tier replica's metrics name it ``deployment``), for one Ray cluster
(the ``cluster`` variable, as Ray's own dashboards have it: the ``ray_io_cluster`` label KubeRay's PodMonitor sets).
"""

from __future__ import annotations

import json
from typing import Any

from deployments import INGRESS_DEPLOYMENT
from serve_app.catalogue import Tier

RATE = "$__rate_interval"
# Every series is the chosen cluster's and application's: another Serve app on the cluster with a deployment named
# `ingress`, or another bgserve, on this cluster or another one Prometheus scrapes, would add up with it. (A tier
# replica's and the ingress's metrics carry Serve's `application`.) Where no series has `ray_io_cluster` (one Ray,
# scraped without it), "All" is ".*", which matches the missing label too.
CLUSTER = 'ray_io_cluster=~"$cluster"'
APPLICATION = f'{CLUSTER}, application=~"$application"'
TIER = f'tier=~"$tier", {APPLICATION}'
DEPLOYMENT = f'deployment=~"$tier", {APPLICATION}'


def quantiles(metric: str, by: str, selector: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def mean(total: str, histogram: str, by: str, selector: str) -> str:
    """A mean from an exact total (a counter) over a histogram's count. Not from the histogram's ``_sum``: Ray 2.60
    exports that rebuilt from bucket midpoints (deployments/metrics.py)."""
    return (
        f"sum by ({by}) (rate({total}{{{selector}}}[{RATE}])) / "
        f"sum by ({by}) (rate({histogram}_count{{{selector}}}[{RATE}]))"
    )


# The requests the proxy guard answers 503 itself (no ingress replica sees them): none while every ingress serves.
# (application "" too: a replica that died under a request is counted before the guard knows the request's app.)
PROXY_REFUSALS = (
    "sum by (application, reason) "
    f'(rate(ray_bgserve_proxy_refusals_total{{{CLUSTER}, application=~"$application|"}}[{RATE}]))'
)


def gauge(how: str, metric: str, selector: str, by: str = "deployment") -> str:
    """A gauge's latest value per series. Ray exports a gauge only in the report interval it was set in, so a plain
    instant query falls into the gaps between settings; the last value within the rate window does not."""
    return f"{how} by ({by}) (last_over_time({metric}{{{selector}}}[{RATE}]))"


# (title, unit, [(expression, legend)], needs_gpu). Errors are 4xx and 5xx: a 304 (If-None-Match) is a success.
PANELS: list[tuple[str, str, list[tuple[str, str]], bool]] = [
    (
        "Requests per second",
        "reqps",
        [(f"sum by (tier) (rate(ray_bgserve_requests_total{{{TIER}}}[{RATE}]))", "{{tier}}")],
        False,
    ),
    (
        "Errors per second by code",
        "reqps",
        [
            (
                f'sum by (tier, status, code) (rate(ray_bgserve_requests_total{{{TIER}, status!~"[23].."}}[{RATE}]))',
                "{{tier}} {{status}} {{code}}",
            ),
            (PROXY_REFUSALS, "proxy guard {{application}} {{reason}}"),
        ],
        False,
    ),
    (  # answered images only: a 304, a 4xx or a 503 in milliseconds would pull the quantiles down
        "End-to-end latency (2xx)",
        "ms",
        quantiles("ray_bgserve_request_latency_ms", "tier", f'{TIER}, status_class="2xx"'),
        False,
    ),
    ("Model latency per batch", "ms", quantiles("ray_bgserve_model_batch_latency_ms", "deployment", DEPLOYMENT), False),
    (
        "Where the time goes (mean per request)",
        "ms",
        [(mean("ray_bgserve_step_ms_total", "ray_bgserve_step_latency_ms", "tier, step", TIER), "{{tier}} {{step}}")],
        False,
    ),
    (
        "Batch size (mean)",
        "none",
        [
            (
                mean("ray_bgserve_model_images_total", "ray_bgserve_model_batch_latency_ms", "deployment", DEPLOYMENT),
                "{{deployment}}",
            )
        ],
        False,
    ),
    (  # Serve's histogram: quantiles from its buckets (a mean would need an exact sum, which Ray does not export)
        "Batch wait (Serve)",
        "ms",
        quantiles("ray_serve_batch_wait_time_ms", "deployment", DEPLOYMENT)[:2],
        False,
    ),
    (
        "Queued requests (Serve)",
        "none",
        [
            (
                gauge("sum", "ray_serve_deployment_queued_queries", DEPLOYMENT),
                "waiting for a replica {{deployment}}",
            ),
            (
                gauge("sum", "ray_serve_batch_queue_length", DEPLOYMENT),
                "waiting for a batch {{deployment}}",
            ),
        ],
        False,
    ),
    (
        "Healthy replicas (Serve)",
        "none",
        [
            (  # the tiers (under "All", $tier matches the ingress too: it has its own line)
                gauge(
                    "sum", "ray_serve_deployment_replica_healthy", f'{DEPLOYMENT}, deployment!="{INGRESS_DEPLOYMENT}"'
                ),
                "{{deployment}}",
            ),
            (
                gauge(
                    "sum", "ray_serve_deployment_replica_healthy", f'deployment="{INGRESS_DEPLOYMENT}", {APPLICATION}'
                ),
                "{{deployment}}",
            ),
        ],
        False,
    ),
    ("Upload size", "none", quantiles("ray_bgserve_input_megapixels", "tier", TIER)[:2], False),
    (
        "Model load time by phase",
        "s",
        [(gauge("max", "ray_bgserve_model_load_seconds", DEPLOYMENT, "deployment, phase"), "{{deployment}} {{phase}}")],
        False,
    ),
    (
        "GPU memory in use",
        "bytes",
        [(gauge("max", "ray_bgserve_gpu_memory_used_bytes", DEPLOYMENT, "deployment, replica"), "{{replica}}")],
        True,
    ),
    (
        "GPU utilisation",
        "percent",
        [(gauge("max", "ray_bgserve_gpu_utilization_percent", DEPLOYMENT, "deployment, replica"), "{{replica}}")],
        True,
    ),
]


def dashboard() -> dict[str, Any]:
    panels = []
    for index, (title, unit, targets, needs_gpu) in enumerate(PANELS):
        panels.append(
            {
                "id": index + 1,
                "type": "timeseries",
                "title": title,
                "description": "Only where a tier replica has a GPU (NVML)." if needs_gpu else "",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)
                ],
            }
        )
    return {
        "uid": "bgserve",
        "title": "bgserve: background removal on Ray Serve",
        "tags": ["bgserve", "ray", "serve"],
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
                {
                    "name": "cluster",
                    "type": "query",
                    "label": "Cluster",
                    "description": "The Ray cluster, by the ray_io_cluster label (KubeRay's PodMonitor sets it, "
                    "deploy/kuberay/podmonitor.yaml); All where Prometheus scrapes one Ray without it.",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": "label_values(ray_serve_deployment_replica_healthy, ray_io_cluster)",
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                },
                {
                    "name": "application",
                    "type": "query",
                    "label": "Application",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": f"label_values(ray_serve_deployment_replica_healthy{{{CLUSTER}}}, application)",
                    "current": {"text": "bgserve", "value": "bgserve"},  # the shipped configs' name
                    "refresh": 2,
                },
                {
                    "name": "tier",
                    "type": "query",
                    "label": "Tier",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    # From Serve's replica health, there from the start (not from requests, whose tier label is
                    # `other` for an unknown tier); the ingress deployment is no tier.
                    "query": f"label_values(ray_serve_deployment_replica_healthy{{{APPLICATION}}}, deployment)",
                    "regex": f"/^({'|'.join(t.value for t in Tier)})$/",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                },
            ]
        },
        "panels": panels,
    }


def gpu_only_expressions() -> set[str]:
    return {expr for _, _, targets, needs_gpu in PANELS if needs_gpu for expr, _ in targets}


if __name__ == "__main__":
    print(json.dumps(dashboard(), indent=2))
