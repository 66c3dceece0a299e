import json

from deployments.grafana import dashboard
from tests.conftest import ROOT


def test_the_checked_in_dashboard_is_the_generated_one() -> None:
    """configs/grafana/bgserve.json is `python -m deployments.grafana`'s output: edit the builder, regenerate."""
    assert json.loads((ROOT / "configs" / "grafana" / "bgserve.json").read_text()) == dashboard()


def test_every_series_on_the_board_is_the_chosen_applications() -> None:
    """Another Serve app's `ingress`, or a second bgserve on the cluster, was added into the panels."""
    import re

    expressions = [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]
    selectors = [m for e in expressions for m in re.finditer(r"\b(ray_\w+)(\{[^}]*\})?", e)]
    assert len(selectors) >= len(expressions)
    for found in selectors:
        assert found.group(2) and 'application=~"$application' in found.group(2), found.group(0)
        # ...and the chosen Ray cluster's: two KubeRay clusters' bgserve apps were added up (the same app name)
        assert 'ray_io_cluster=~"$cluster"' in found.group(2), found.group(0)
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert 'application=~"$application"' in variables["tier"]["query"]
    assert (
        'ray_io_cluster=~"$cluster"' in variables["tier"]["query"] and "$cluster" in variables["application"]["query"]
    )
    # "All" must match series without the label (one Ray scraped without it): PromQL's =~".*" does.
    assert variables["cluster"]["includeAll"] and variables["cluster"]["allValue"] == ".*"


def test_metric_tags_come_from_closed_sets() -> None:
    """A client's odd parameters or error bodies never become new tag values (series)."""
    from deployments.metrics import OTHER, _error_code, known

    assert known("fast", {"fast", "balanced"}, "balanced") == "fast"
    assert known(None, {"fast", "balanced"}, "balanced") == "balanced"
    assert known("fast'; DROP", {"fast", "balanced"}, "balanced") == OTHER
    assert _error_code(b'{"error": {"code": "invalid_image", "message": "m"}}') == "invalid_image"
    assert _error_code(b'{"error": {"code": "x y z"}}') == OTHER
    assert _error_code(b"plain text") == OTHER


def test_errors_are_4xx_and_5xx_and_latency_is_of_answered_images() -> None:
    """A 304 (If-None-Match, a success) showed on the errors panel, and the latency quantiles mixed in refusals
    answered in milliseconds."""
    import re

    panels = {panel["title"]: [t["expr"] for t in panel["targets"]] for panel in dashboard()["panels"]}
    (excluded,) = re.findall(r'status!~"([^"]+)"', panels["Errors per second by code"][0])
    for status in ("200", "206", "304"):
        assert re.fullmatch(excluded, status), status  # PromQL regexes match the whole value
    for status in ("400", "413", "499", "503", "504"):
        assert not re.fullmatch(excluded, status), status
    latency = next(exprs for title, exprs in panels.items() if title.startswith("End-to-end latency"))
    assert all('status_class="2xx"' in expr for expr in latency)
