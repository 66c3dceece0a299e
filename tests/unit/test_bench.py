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


def test_bench_serve_reports_each_ratio_as_a_median_over_rounds_with_its_range(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bench.serve import chart as serve_chart
    from bench.serve import medians_table, rows_table

    def row(number: int, concurrency: int, speedup: float, overhead: float) -> dict:
        steps = dict.fromkeys(("decode", "resize", "queue", "model", "upsample", "effect", "encode"), 0.01)
        return {
            "round": number, "tier": "fast", "effect": "mask", "runtime": "openvino", "concurrency": concurrency,
            "p50_s": 1.3, "p95_s": 1.4, "images_per_s": 0.7, "steps_s": steps, "bare_runtime_images_per_s": 0.8,
            "bare_beside_service_images_per_s": 0.75, "overhead": overhead, "ray_presence_cost": 0.06,
            "request_path_overhead": 0.02, "remover_seconds_per_image": 1.8, "speedup_vs_remover": speedup,
        }  # fmt: skip

    rows = [row(1, 1, 1.19, 0.13), row(1, 4, 1.30, 0.08), row(2, 1, 1.32, 0.07), row(3, 1, 1.20, 0.08)]
    summary = medians_table(rows)
    assert "| fast | mask | openvino | 1 | 1.20x (1.19-1.32) | 8% (7%-13%) |" in summary
    assert "| fast | mask | openvino | 4 | 1.30x (1.30-1.30) | 8% (8%-8%) |" in summary
    assert "Medians over 3 rounds" in summary
    assert rows_table(rows).count("\n| 1 | fast |") == 2
    serve_chart(rows, tmp_path / "serve.png")
    assert (tmp_path / "serve.png").stat().st_size > 0


def test_bench_roofline_counts_the_models_arithmetic_and_rates_runtimes_against_the_matrix_product() -> None:
    from bench.roofline import efficiency_rows, model_gflop

    # The fast tier's model at 384 px is ~210 GFLOP an image (the count, made independently of this code).
    assert 200 < model_gflop(384, 384, 384) < 220
    rows = efficiency_rows(210.0, {"eager": 2.1, "openvino": 1.05}, peak=200.0)
    assert [(r["runtime"], r["gflops"], r["of_peak"]) for r in rows] == [
        ("eager", 100.0, 0.5),
        ("openvino", 200.0, 1.0),
    ]
