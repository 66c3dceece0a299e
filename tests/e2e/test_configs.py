"""The Serve configs an operator deploys: each parses as Serve's own schema, and its args as AppConfig."""

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.schemas import AppConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", ["serve_config.yaml", "configs/cpu.yaml", "configs/test.yaml", "configs/try.yaml"])
def test_shipped_configs_validate(path: str) -> None:
    text = (ROOT / path).read_text()
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    (application,) = schema.applications
    assert application.import_path == "deployments.app:build_app"
    config = AppConfig.model_validate(application.args)
    if path == "serve_config.yaml":
        shares = [t.num_gpus for t in config.tiers.values()]
        assert all(s > 0 for s in shares) and sum(shares) <= 1.0  # three tiers on one GPU
    else:
        assert all(t.num_gpus == 0 and t.resolved_device == "cpu" for t in config.tiers.values())


@pytest.mark.parametrize("path", ["serve_config.yaml", "configs/cpu.yaml"])
def test_batching_overrides_are_user_config_only(path: str) -> None:
    """Deployment overrides carry only user_config (live batching): a ray_actor_options there would replace
    the resources the builder sets, and a typo in a name would silently configure nothing."""
    from serve_app.schemas import BatchingConfig

    (application,) = yaml.safe_load((ROOT / path).read_text())["applications"]
    tiers = AppConfig.model_validate(application["args"]).tiers
    for override in application.get("deployments", []):
        assert override["name"] in {t.value for t in tiers} and set(override) == {"name", "user_config"}
        batching = BatchingConfig.model_validate(override["user_config"])
        assert tiers[override["name"]].max_ongoing_requests >= batching.max_batch_size


def test_try_config_needs_no_checkpoint() -> None:
    """`scripts/serve.sh --try` must serve on a machine with no checkpoint and no internet."""
    (application,) = yaml.safe_load((ROOT / "configs/try.yaml").read_text())["applications"]
    config = AppConfig.model_validate(application["args"])
    assert {t.weights for t in config.tiers.values()} == {"untrained"}
