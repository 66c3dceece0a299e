"""The benchmarks' own inputs and reports, checked where a failure is cheap (here) rather than on a lent GPU."""

from bench.common import PHOTOS, photo_1080p
from bench.runtimes import chart, markdown


def test_every_bench_photo_ships_with_scikit_image() -> None:
    for name in PHOTOS:  # a missing one failed every batch larger than the list on the first GPU lease
        assert photo_1080p(name).shape == (1080, 1920, 3), name


def test_a_run_where_everything_failed_still_reports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    failed = [{"tier": "fast", "runtime": "fp16", "error": "Traceback ...\nConfigurationError: fp16 runs on CUDA only"}]
    chart(failed, tmp_path / "runtimes.png")
    assert "failed: ConfigurationError: fp16 runs on CUDA only" in markdown(failed, {}, "cpu:test")
