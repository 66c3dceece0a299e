"""The CLI's file handling without a service (tests/integration/test_clients.py runs it against the real one)."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from serve_app import cli
from tests.conftest import ROOT
from tests.support.fake_service import Answer, fake_service


def test_an_output_appears_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "deep" / "photo_rgba.png"
    cli.write_atomically(target, b"x" * 100_000)
    assert target.read_bytes() == b"x" * 100_000 and [p.name for p in target.parent.iterdir()] == [target.name]

    def interrupted(*_: object) -> None:  # Ctrl-C arriving between the write and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.os, "replace", interrupted)
    other = tmp_path / "deep" / "other_rgba.png"
    with pytest.raises(KeyboardInterrupt):
        cli.write_atomically(other, b"y" * 100_000)
    assert not other.exists() and [p.name for p in target.parent.iterdir()] == [target.name]  # no .part left


def test_inputs_are_files_folders_and_globs_and_outputs_keep_the_folders(tmp_path: Path) -> None:
    for name in ("a.jpg", "sub/b.PNG", "sub/deeper/c.webp", "notes.txt", "sub/d.tiff"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = cli.find_inputs([str(tmp_path), str(tmp_path / "notes.txt"), str(tmp_path / "*.jpg")])
    assert [str(relative) for _, relative in found] == ["a.jpg", "notes.txt", "sub/b.PNG", "sub/d.tiff",
                                                        "sub/deeper/c.webp"]  # fmt: skip
    assert cli.output_path(Path("sub/b.PNG"), tmp_path / "out", "white", "jpeg") == tmp_path / "out/sub/b_white.jpg"


def test_a_photo_whose_name_looks_like_an_output_is_still_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """product_rgba.png with no product.* beside it is a photo: it was dropped without a word ("0 done, 0 skipped,
    0 failed"). No service answers here, so it fails, which shows it was sent."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "product_rgba.png").write_bytes(b"")
    argv = [str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--url", "http://127.0.0.1:9", "--retries", "0"]
    assert cli.main(argv) == 1
    assert "0 done, 0 skipped (already there), 1 failed" in capsys.readouterr().out


def test_an_effect_the_service_does_not_have_is_refused_before_any_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from serve_app.schemas import Effect

    assert set(cli.EFFECTS) == {e.value for e in Effect}  # background with --background
    with pytest.raises(SystemExit) as exited:
        cli.main(["photo.jpg", "--effect", "nope"])
    assert exited.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_outputs_are_readable_as_ordinary_files(tmp_path: Path) -> None:
    target = tmp_path / "x_rgba.png"
    cli.write_atomically(target, b"png")
    assert target.stat().st_mode & 0o777 == 0o666 & ~cli.UMASK  # not mkstemp's 0600


def test_two_inputs_with_one_output_name_and_earlier_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """photo.jpg and photo.png would both write photo_rgba.png: the second is refused, not silently overwritten;
    a previous run's outputs in the input folder are not taken as inputs. (Nothing here reaches a service: the
    one output that would be made exists already.)"""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("photo.jpg", "photo.png", "photo_rgba.png"):
        (folder / name).write_bytes(b"")
    assert cli.main([str(folder), "--out", str(folder), "--url", "http://127.0.0.1:9"]) == 1
    out = capsys.readouterr().out
    assert "0 done, 1 skipped (already there), 1 failed" in out
    assert "photo.png" in out and "also" in out and "photo_rgba_rgba" not in out


def test_an_out_folder_inside_the_input_folder_is_not_searched(tmp_path: Path) -> None:
    """`--out p2/out` with input `p2/`: each run cut out the last run's outputs of another effect
    (out/out/scene_rgba_mask.png, then deeper). `--out .` above the inputs, or the inputs' own folder, still finds
    them all; a file named on its own is always taken."""
    folder = tmp_path / "p2"
    for name in ("scene.jpg", "out/scene_rgba.png", "out/out/scene_rgba_mask.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    inputs = cli.find_inputs([str(folder)])
    assert len(inputs) == 3
    assert cli.earlier_outputs(inputs, [str(folder)], folder / "out") == {
        folder / "out/scene_rgba.png",
        folder / "out/out/scene_rgba_mask.png",
    }
    jpgs = [str(folder / "*.jpg")]
    assert cli.earlier_outputs(cli.find_inputs(jpgs), jpgs, folder / "out") == set()  # none found there
    glob_inputs = cli.find_inputs([str(folder / "**" / "*.png")])
    assert len(cli.earlier_outputs(glob_inputs, [str(folder / "**" / "*.png")], folder / "out")) == 2
    assert cli.earlier_outputs(inputs, [str(folder)], tmp_path) == set()  # out above the inputs
    assert cli.earlier_outputs(inputs, [str(folder)], folder) == set()  # beside them: the output-name rule's
    # The run itself: the one photo's output is there already, and nothing else is an input (no service answers).
    assert cli.main([str(folder), "--out", str(folder / "out"), "--url", "http://127.0.0.1:9", "--retries", "0"]) == 0
    named = folder / "out/scene_rgba.png"
    assert cli.earlier_outputs(inputs, [str(folder), str(named)], folder / "out") == {
        folder / "out/out/scene_rgba_mask.png"
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "localhost:8000"], "needs http:// or https://"),
        (["--color", "red"], "--color is for --effect color"),
        (["--concurrency", "0"], "0 is under 1"),
        (["--retries", "-1"], "-1 is under 0"),
        (["--timeout", "0"], "0 is not a number of seconds over 0"),
        (["--crop-margin", "10"], "--crop-margin is for --crop"),
        (["--blur-sigma", "3"], "--blur-sigma is for --effect blur"),
        (["--effect", "mask", "--refine", "full"], "--refine is for soft rgba edges"),
        (["--refine", "full", "--threshold", "0.5"], "--refine is for soft rgba edges"),
        (["--lossless"], "--lossless is for --format webp"),
        (["--quality", "80"], "--quality is for a lossy format"),
        (["--format", "webp", "--lossless", "--quality", "80"], "--quality is for a lossy format"),
        (["--effect", "background"], "--effect background and --background IMAGE go together"),
        (["--background", "photo.jpg"], "--effect background and --background IMAGE go together"),
        (["--effect", "background", "--background", "/no/such/backdrop.jpg"], "no such file: /no/such/backdrop.jpg"),
    ],
)
def test_arguments_that_cannot_work_are_refused_before_any_request(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL without http:// failed each image after four retries (15 s each); --color without --effect color and
    --concurrency 0 were ignored in silence."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["photo.jpg", *argv])
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_an_input_that_names_nothing_is_refused_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bgserve-remove p1.jpg typo.jpg nodir/` did p1.jpg, said nothing of the others and exited 0."""
    (tmp_path / "p1.jpg").write_bytes(b"")
    named = [str(tmp_path / "p1.jpg"), str(tmp_path / "typo.jpg"), str(tmp_path / "nodir"), str(tmp_path / "*.gif")]
    assert cli.main([*named, "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "typo.jpg" in err and "nodir" in err and "*.gif" in err and "p1.jpg" not in err


def test_earlier_outputs_of_this_effect_in_another_format_are_not_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--effect mask --format webp`, then `--format png`, with --out on the inputs' folder: the second run cut out
    the first one's mask (a_mask_mask.png). Another effect's name is left an input: shirt_white.jpg beside
    shirt.jpg may well be a photo. (Nothing reaches a service: every output wanted is there already.)"""
    for name in ("a.jpg", "a_mask.webp", "a_mask.png", "a_white.jpg", "a_white_mask.png"):
        (tmp_path / name).write_bytes(b"")
    argv = [str(tmp_path), "--out", str(tmp_path), "--effect", "mask", "--url", "http://127.0.0.1:9"]
    assert cli.main([*argv, "--retries", "0"]) == 0
    captured = capsys.readouterr()
    assert "0 done, 2 skipped (already there), 0 failed" in captured.out
    assert "3 files not taken as inputs: earlier outputs" in captured.err  # a_mask.webp, a_mask.png, a_white_mask.png


def test_an_answer_every_image_would_get_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong API key (401) or URL (404) failed each of a folder's images in turn; it now stops at the first."""
    for i in range(40):
        (tmp_path / f"p{i}.png").write_bytes(b"x")
    with fake_service(lambda *_: Answer(401, "unauthorized")) as (url, seen):
        code = cli.main([str(tmp_path), "--out", str(tmp_path / "out"), "--url", url, "--concurrency", "2"])
    out = capsys.readouterr().out
    assert code == 1 and "stopped: the API key is refused" in out, out
    assert seen.requests <= 4, seen.requests  # those already in flight, not the forty


def test_a_background_the_service_refuses_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The --background image goes with every request: when the service cannot read it, every image would fail."""
    for i in range(40):
        (tmp_path / f"p{i}.png").write_bytes(b"x")
    backdrop = tmp_path / "backdrop.png"  # in the folder searched: no input
    backdrop.write_bytes(b"not an image")
    refused = Answer(400, "invalid_image", message="background image: the image could not be decoded")
    argv = [str(tmp_path), "--out", str(tmp_path / "out"), "--concurrency", "2"]
    with fake_service(lambda *_: refused) as (url, seen):
        code = cli.main([*argv, "--url", url, "--effect", "background", "--background", str(backdrop)])
    out = capsys.readouterr().out
    assert code == 1 and "stopped: the service refuses the --background image" in out, out
    assert seen.requests <= 4, seen.requests  # those already in flight, not the forty
    too_large = Answer(413, "payload_too_large", message="upload is 3000 bytes; this service takes at most 2048")
    backdrop.write_bytes(b"x" * 2000)  # with the body's framing, over the limit by itself: every request would be
    with fake_service(lambda *_: too_large) as (url, seen):
        code = cli.main([*argv, "--url", url, "--effect", "background", "--background", str(backdrop)])
    out = capsys.readouterr().out
    assert code == 1 and "the --background image alone is over the service's upload limit" in out, out
    assert seen.requests <= 4, seen.requests
    with fake_service(lambda *_: Answer(400, "invalid_image")) as (url, seen):  # the photo's own fault: go on
        assert cli.main([*argv, "--url", url, "--effect", "background", "--background", str(backdrop)]) == 1
    assert seen.requests == 40 and "40 failed" in capsys.readouterr().out  # the backdrop was not sent as a photo


def test_the_services_options_go_with_each_image_and_a_value_it_refuses_stops_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in").mkdir()
    for i in range(40):
        (tmp_path / "in" / f"p{i}.png").write_bytes(b"x")
    paths: list[str] = []

    def answer(method: str, path: str) -> Answer:
        paths.append(path)
        return Answer(200, body=b"png")

    one = [str(tmp_path / "in" / "p0.png"), "--out", str(tmp_path / "out"), "--reverse", "--crop"]
    with fake_service(answer) as (url, _):
        assert cli.main([*one, "--crop-margin", "10%", "--effect", "blur", "--blur-sigma", "3", "--url", url]) == 0
    (query,) = [path.split("?", 1)[1].split("&") for path in paths]
    assert {"blur_sigma=3.0", "reverse=true", "crop=true", "crop_margin=10%25", "effect=blur"} <= set(query), query
    assert not any(part.startswith(("lossless", "quality", "threshold", "refine")) for part in query), query
    every = [str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "--concurrency", "2"]
    refused = Answer(422, "invalid_parameter", message="threshold: Input should be less than or equal to 1")
    with fake_service(lambda *_: refused) as (url, seen):
        assert cli.main([*every, "--threshold", "2", "--url", url]) == 1
    assert "stopped: the service refuses --threshold" in capsys.readouterr().out and seen.requests <= 4
    unserved = Answer(422, "invalid_parameter", message="tier 'quality' is not served here; served tiers: fast")
    with fake_service(lambda *_: unserved) as (url, seen):
        assert cli.main([*every, "--tier", "quality", "--url", url]) == 1
    assert "stopped: the service does not serve that --tier" in capsys.readouterr().out and seen.requests <= 4
    too_wide = Answer(422, "invalid_parameter", message="format=webp holds images up to 16383 pixels a side, and ...")
    with fake_service(lambda *_: too_wide) as (url, seen):  # one image's own: the others go on
        assert cli.main([*every, "--format", "webp", "--url", url]) == 1
    assert seen.requests == 40 and "stopped" not in capsys.readouterr().out


def test_jobs_are_queued_a_few_per_request_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image of a folder was queued at once, and each wait for the next answer looked at all of them: 20,000
    images ran at half the speed of 2,000, and 100,000 held 260 MB of jobs."""
    for i in range(60):
        (tmp_path / f"p{i}.png").write_bytes(b"x")
    most: list[int] = [0]
    submitted: list[Any] = []

    class Counting(ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            # Counted as the CLI sees them: jobs it has submitted and not yet taken back (a job just finished is
            # still there until its wait wakes up), so the bound is checked against what it holds.
            future = super().submit(*args, **kwargs)
            submitted.append(future)
            most[0] = max(most[0], sum(1 for f in submitted if not f.done()))
            return future

    monkeypatch.setattr(cli, "ThreadPoolExecutor", Counting)
    with fake_service(lambda *_: Answer(200, body=b"png")) as (url, seen):
        code = cli.main([str(tmp_path), "--out", str(tmp_path / "out"), "--url", url, "--concurrency", "3"])
    assert code == 0 and seen.requests == 60
    assert most[0] <= cli.QUEUED_PER_SLOT * 3, most[0]


def test_ctrl_c_ends_the_waits_between_tries(tmp_path: Path) -> None:
    """A service that stays down: Ctrl-C waited out every request's remaining tries (93 s), then a second Ctrl-C
    gave tracebacks and no summary. Now the waits end at once and the summary comes."""
    (tmp_path / "p.png").write_bytes(b"x")
    with fake_service(lambda *_: Answer(503, "overloaded", {"Retry-After": "30"})) as (url, seen):
        run = subprocess.Popen(
            [sys.executable, "-m", "serve_app.cli", str(tmp_path), "--out", str(tmp_path / "out"), "--url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 30
        while seen.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        run.send_signal(signal.SIGINT)
        try:
            _, err = run.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            run.kill()
            pytest.fail("Ctrl-C did not end the run within 10 s")
    assert run.returncode == 130, err
    assert "0 done, 0 skipped (already there), 1 failed" in err and "503 overloaded" in err, err


def test_an_output_name_near_the_file_systems_limit_is_written(tmp_path: Path) -> None:
    """The temporary name added the whole output name to itself: a 240-character input failed with 'File name too
    long' after the service had done the work, though its output's name fits."""
    target = tmp_path / ("p" * 240 + "_rgba.png")
    cli.write_atomically(target, b"png")
    assert target.read_bytes() == b"png"


def test_an_answer_slower_than_timeout_fails_that_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.png").write_bytes(b"x")
    with fake_service(lambda *_: Answer(200, delay_s=3.0, body=b"png")) as (url, _):
        started = time.monotonic()
        argv = [str(tmp_path), "--out", str(tmp_path / "out"), "--url", url, "--timeout", "0.5", "--retries", "0"]
        assert cli.main(argv) == 1
    assert time.monotonic() - started < 3
    assert "unreachable: ReadTimeout" in capsys.readouterr().out


def test_temporary_files_a_killed_run_left_are_removed_once_stale(tmp_path: Path) -> None:
    """A SIGTERM or a second Ctrl-C mid-write left .bgserve-*.part files that no later run removed; one a run
    beside this one is writing now is left alone. (Nothing reaches a service: the output is there already.)"""
    (tmp_path / "p.png").write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "p_rgba.png").write_bytes(b"done")
    stale, fresh = out / ".bgserve-abc.part", out / ".bgserve-def.part"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    assert cli.main([str(tmp_path / "p.png"), "--out", str(out), "--url", "http://127.0.0.1:9"]) == 0
    assert not stale.exists() and fresh.exists()
