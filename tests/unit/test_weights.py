import errno
import hashlib
import http.server
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from serve_app import weights, weights_cli
from serve_app.catalogue import CATALOGUE, Checkpoint, Tier
from serve_app.errors import ChecksumMismatchError, WeightsUnavailableError
from serve_app.weights import AUTO, UNTRAINED, place, resolve, verify

PAYLOAD = b"PK\x03\x04 pretend checkpoint " * 5000  # starts as torch.save's zip does
PROXY_PAGE = b"<html><body>Please log in to the corporate proxy</body></html>"


class Server:
    """A local HTTP server: /good (the payload), /wrong (other bytes), /cut (stops halfway), /login (a proxy's page)."""

    def __init__(self) -> None:
        payload = PAYLOAD

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = {
                    "/good": payload,
                    "/wrong": payload[::-1],
                    "/cut": payload,
                    "/login": PROXY_PAGE,
                    "/tiny": payload[:3000],
                }.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if self.path != "/cut" else body[: len(body) // 2])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()


def checkpoint(url: str, md5: str | None = hashlib.md5(PAYLOAD).hexdigest()) -> Checkpoint:
    return Checkpoint(filename="ckpt_test.pth", url=url, md5=md5)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_download_verifies_and_renames_into_place(server: Server, tmp_path: Path) -> None:
    resolved = resolve(checkpoint(f"{server.url}/good"), AUTO, tmp_path)
    assert resolved.path == tmp_path / "ckpt_test.pth" and resolved.label == "ckpt_test.pth"
    assert resolved.path.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["ckpt_test.pth"]  # no temporary file left behind


def test_download_with_wrong_checksum_installs_nothing(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatchError, match="expected"):
        resolve(checkpoint(f"{server.url}/wrong"), AUTO, tmp_path)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("md5", [hashlib.md5(PAYLOAD).hexdigest(), None], ids=["published-md5", "no-md5"])
def test_cut_transfer_installs_nothing(server: Server, tmp_path: Path, md5: str | None) -> None:
    with pytest.raises(WeightsUnavailableError, match="ended after"):
        resolve(checkpoint(f"{server.url}/cut", md5=md5), AUTO, tmp_path)
    assert leftovers(tmp_path) == []


def test_offline_error_names_file_url_and_destination(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/ckpt_test.pth"  # nothing listens on the discard port
    with pytest.raises(WeightsUnavailableError) as caught:
        resolve(checkpoint(url), AUTO, tmp_path)
    message = caught.value.message
    assert "ckpt_test.pth" in message and url in message and str(tmp_path / "ckpt_test.pth") in message
    assert "bgserve-weights place" in message


def test_downloads_turned_off_explains_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="downloads are turned off") as caught:
        resolve(checkpoint("http://example.invalid/x.pth"), AUTO, tmp_path, allow_download=False)
    assert "http://example.invalid/x.pth" in caught.value.message


def test_cached_file_is_used_without_downloading(tmp_path: Path) -> None:
    (tmp_path / "ckpt_test.pth").write_bytes(PAYLOAD)
    resolved = resolve(checkpoint("http://127.0.0.1:9/unreachable"), AUTO, tmp_path)
    assert resolved.path == tmp_path / "ckpt_test.pth"


def test_damaged_cached_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ckpt_test.pth").write_bytes(PAYLOAD[:-1])
    with pytest.raises(ChecksumMismatchError, match="md5"):
        resolve(checkpoint("http://127.0.0.1:9/unreachable"), AUTO, tmp_path)


def test_unpublished_checksum_is_recorded_then_enforced(server: Server, tmp_path: Path) -> None:
    nightly = checkpoint(f"{server.url}/good", md5=None)
    path = resolve(nightly, AUTO, tmp_path).path
    assert path is not None
    record = tmp_path / "ckpt_test.pth.sha256"
    assert record.read_text().strip() == hashlib.sha256(PAYLOAD).hexdigest()
    verify(nightly, path)  # unchanged: passes
    path.write_bytes(PAYLOAD + b"tampered")
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        resolve(nightly, AUTO, tmp_path)


def test_unpublished_checksum_recorded_for_a_file_found_in_the_cache(tmp_path: Path) -> None:
    (tmp_path / "ckpt_test.pth").write_bytes(PAYLOAD)
    resolve(checkpoint("http://127.0.0.1:9/x", md5=None), AUTO, tmp_path)
    assert (tmp_path / "ckpt_test.pth.sha256").read_text().strip() == hashlib.sha256(PAYLOAD).hexdigest()


def test_an_empty_checksum_record_is_a_mismatch_not_a_crash(tmp_path: Path) -> None:
    """A record emptied (a full disk, a careless edit) raised IndexError in the replica's start-up."""
    (tmp_path / "ckpt_test.pth").write_bytes(PAYLOAD)
    (tmp_path / "ckpt_test.pth.sha256").write_text("\n")
    with pytest.raises(ChecksumMismatchError, match=r"recorded \(nothing\)"):
        resolve(checkpoint("http://127.0.0.1:9/x", md5=None), AUTO, tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_proxy_page_is_not_recorded_as_the_unpublished_checkpoint(server: Server, tmp_path: Path) -> None:
    """With no published checksum, the first file that arrived was trusted for good: a proxy's login page too."""
    with pytest.raises(ChecksumMismatchError, match="not a PyTorch checkpoint") as caught:
        resolve(checkpoint(f"{server.url}/login", md5=None), AUTO, tmp_path)
    assert "Nothing was installed" in caught.value.message
    assert leftovers(tmp_path) == []
    (tmp_path / "ckpt_test.pth").write_bytes(PAYLOAD[:10_000].replace(b"PK", b"<h", 1))  # placed by hand, cut
    with pytest.raises(ChecksumMismatchError, match="not a PyTorch checkpoint"):
        resolve(checkpoint("http://127.0.0.1:9/x", md5=None), AUTO, tmp_path)
    assert leftovers(tmp_path) == ["ckpt_test.pth"]  # no record of it


def test_installed_files_are_readable_by_other_users_as_the_umask_says(server: Server, tmp_path: Path) -> None:
    """mkstemp made them 0600: a checkpoint fetched by root was unreadable to the service's own user."""
    old = os.umask(0o022)
    try:
        resolve(checkpoint(f"{server.url}/good", md5=None), AUTO, tmp_path)
        source = tmp_path / "have.pth"
        source.write_bytes(PAYLOAD)
        placed = place(checkpoint("http://127.0.0.1:9/x"), source, tmp_path / "cache")
    finally:
        os.umask(old)
    for path in (tmp_path / "ckpt_test.pth", tmp_path / "ckpt_test.pth.sha256", placed):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_temporary_files_left_by_killed_downloads_are_swept(server: Server, tmp_path: Path) -> None:
    stale, live = tmp_path / ".ckpt_test.pth.dead0001.part", tmp_path / ".ckpt_test.pth.live0002.part"
    for part in (stale, live):
        part.write_bytes(b"half a checkpoint")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    resolve(checkpoint(f"{server.url}/good"), AUTO, tmp_path)
    assert leftovers(tmp_path) == [live.name, "ckpt_test.pth"]  # another process's transfer in progress stays


def test_a_full_disk_is_said_so_not_taken_for_being_offline(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = tmp_path / ".ckpt_test.pth.full.part"
    part.touch()
    monkeypatch.setattr(weights, "_new_file", lambda beside, suffix="": (os.open("/dev/full", os.O_WRONLY), part))
    with pytest.raises(WeightsUnavailableError, match="the disk is full") as caught:
        resolve(checkpoint(f"{server.url}/good"), AUTO, tmp_path)
    assert "could not be downloaded" not in caught.value.message and str(tmp_path) in caught.value.message


def test_a_read_only_weights_directory_loads_an_unpublished_checkpoint_unrecorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only mount of the weights is common; recording the sha256 raised OSError and the tier never started."""
    (tmp_path / "ckpt_test.pth").write_bytes(PAYLOAD)

    def read_only(record: Path, sha256: str) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(record.parent))

    monkeypatch.setattr(weights, "_write_record", read_only)
    resolved = resolve(checkpoint("http://127.0.0.1:9/x", md5=None), AUTO, tmp_path)
    assert resolved.path == tmp_path / "ckpt_test.pth"
    assert "could not be recorded" in caplog.text and hashlib.sha256(PAYLOAD).hexdigest() in caplog.text


def test_the_cli_reports_a_bad_config_and_checks_every_tier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for text in (None, "", "- a list\n", "applications: 3\n", "a: [unclosed\n"):
        config = tmp_path / "serve.yaml"
        config.unlink(missing_ok=True)
        if text is not None:
            config.write_text(text)
        assert weights_cli.main(["fetch", "--config", str(config)]) == 1, text
        assert capsys.readouterr().err.startswith("error: "), text
    for tier in (Tier.FAST, Tier.BALANCED):
        (tmp_path / CATALOGUE[tier].checkpoint.filename).write_bytes(PAYLOAD)
    real_verify = weights.verify

    def unreadable_fast(checkpoint: Checkpoint, path: Path) -> None:
        if path.name == CATALOGUE[Tier.FAST].checkpoint.filename:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real_verify(checkpoint, path)

    monkeypatch.setattr(weights_cli, "verify", unreadable_fast)
    assert weights_cli.main(["verify", "--tier", "fast", "--tier", "balanced", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "fast: error: [Errno 13] Permission denied" in err and "balanced: error: /" in err  # both checked


def test_own_checkpoints_are_told_apart_by_their_whole_path(tmp_path: Path) -> None:
    """Cached masks and ETags were keyed by the file's name: two model.pth in two folders shared them (a client got
    a 304 for another model's bytes)."""
    from serve_app.weights import weights_identity

    published = checkpoint("http://127.0.0.1:9/x")
    first, second = tmp_path / "2024-01" / "model.pth", tmp_path / "2024-06" / "model.pth"
    assert weights_identity(published, str(first), tmp_path) != weights_identity(published, str(second), tmp_path)
    assert weights_identity(published, "2024-01/model.pth", tmp_path) == weights_identity(
        published, str(first), tmp_path
    )
    assert weights_identity(published, AUTO, tmp_path) == "ckpt_test.pth"  # published: its name (md5-checked)
    # A folder whose name is not UTF-8 (bytes as the filesystem has them) made every ETag raise: printable now.
    odd = Path(os.fsdecode(b"/srv/mod\xe8les/model.pth"))
    assert weights_identity(published, str(odd), tmp_path).encode() == b"/srv/mod\\xe8les/model.pth"


def test_a_download_killed_after_another_finished_is_swept_at_the_next_start(server: Server, tmp_path: Path) -> None:
    resolve(checkpoint(f"{server.url}/good"), AUTO, tmp_path)
    stale = tmp_path / ".ckpt_test.pth.dead0003.part"
    stale.write_bytes(b"half")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    resolve(checkpoint(f"{server.url}/good"), AUTO, tmp_path)  # cached: verified, nothing downloaded
    assert leftovers(tmp_path) == ["ckpt_test.pth"]


def test_a_disk_that_fills_at_close_is_said_so(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last buffered bytes go out when the file closes: a full disk said so there read as being offline."""
    part = tmp_path / ".ckpt_test.pth.close.part"
    part.touch()
    monkeypatch.setattr(weights, "_new_file", lambda beside, suffix="": (os.open("/dev/full", os.O_WRONLY), part))
    small = Checkpoint(filename="ckpt_test.pth", url=f"{server.url}/tiny", md5=None)
    with pytest.raises(WeightsUnavailableError, match="the disk is full"):
        resolve(small, AUTO, tmp_path)


def test_configured_path_wins_and_skips_the_checksum(tmp_path: Path) -> None:
    own = tmp_path / "mine.pth"
    own.write_bytes(b"my fine-tuned weights")
    assert resolve(checkpoint("http://127.0.0.1:9/x"), str(own), tmp_path / "cache").path == own
    assert resolve(checkpoint("http://127.0.0.1:9/x"), "mine.pth", tmp_path).path == own  # relative to the dir
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        resolve(checkpoint("http://127.0.0.1:9/x"), "missing.pth", tmp_path)


def test_a_label_is_a_valid_header_value_whatever_the_files_name(tmp_path: Path) -> None:
    """X-Weights carries the file's name: one with non-Latin-1 characters made every answer a 500."""
    from starlette.responses import Response

    own = tmp_path / "ckpt—v2 é.pth"
    own.write_bytes(b"weights")
    label = resolve(checkpoint("http://127.0.0.1:9/x"), str(own), tmp_path).label
    assert label == "ckpt%E2%80%94v2 %C3%A9.pth"
    Response(headers={"X-Weights": label})  # encodes as Latin-1 without error


def test_untrained_is_labelled() -> None:
    resolved = resolve(checkpoint("http://127.0.0.1:9/x"), UNTRAINED, Path("/nonexistent"))
    assert resolved.path is None and resolved.label == "untrained"


def test_place_copies_and_verifies(tmp_path: Path) -> None:
    source = tmp_path / "download.pth"
    source.write_bytes(PAYLOAD)
    placed = place(checkpoint("http://127.0.0.1:9/x"), source, tmp_path / "cache")
    assert placed.read_bytes() == PAYLOAD
    source.write_bytes(b"something else")
    with pytest.raises(ChecksumMismatchError):
        place(checkpoint("http://127.0.0.1:9/x"), source, tmp_path / "cache2")
    assert not (tmp_path / "cache2" / "ckpt_test.pth").exists()


def test_cli_fetch_verify_place(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fast = CATALOGUE[Tier.FAST]
    served = replace(fast.checkpoint, url=f"{server.url}/good", md5=hashlib.md5(PAYLOAD).hexdigest())
    monkeypatch.setitem(CATALOGUE, Tier.FAST, replace(fast, checkpoint=served))
    assert weights_cli.main(["verify", "--tier", "fast", "--dir", str(tmp_path)]) == 1  # a deploy step gates on it
    assert "fast: error: MISSING" in capsys.readouterr().err
    assert weights_cli.main(["fetch", "--tier", "fast", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "ckpt_fast.pth").read_bytes() == PAYLOAD
    assert weights_cli.main(["verify", "--tier", "fast", "--dir", str(tmp_path)]) == 0
    (tmp_path / "ckpt_fast.pth").write_bytes(b"broken")
    assert weights_cli.main(["verify", "--tier", "fast", "--dir", str(tmp_path)]) == 1
    assert "md5" in capsys.readouterr().err
    source = tmp_path / "have.pth"
    source.write_bytes(PAYLOAD)
    assert weights_cli.main(["place", str(source), "--tier", "fast", "--dir", str(tmp_path / "other")]) == 0
    assert (tmp_path / "other" / "ckpt_fast.pth").read_bytes() == PAYLOAD
    assert weights_cli.main(["place", str(source), "--dir", str(tmp_path / "third")]) == 1  # which tier?
    assert "--tier" in capsys.readouterr().err
    named = tmp_path / "downloads" / "ckpt_fast.pth"
    named.parent.mkdir()
    named.write_bytes(PAYLOAD)
    assert weights_cli.main(["place", str(named), "--dir", str(tmp_path / "third")]) == 0  # known by its name
    assert (tmp_path / "third" / "ckpt_fast.pth").read_bytes() == PAYLOAD


def test_cli_fetches_only_what_a_config_downloads(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/serve.sh runs `fetch --config`: tiers on untrained weights or an own checkpoint need no download
    (offline, they would otherwise stop the service from starting)."""
    fast = CATALOGUE[Tier.FAST]
    served = replace(fast.checkpoint, url=f"{server.url}/good", md5=hashlib.md5(PAYLOAD).hexdigest())
    monkeypatch.setitem(CATALOGUE, Tier.FAST, replace(fast, checkpoint=served))
    config = tmp_path / "serve.yaml"
    args = {
        "weights_dir": str(tmp_path / "cache"),
        "default_tier": "fast",
        "tiers": {"fast": {}, "balanced": {"weights": "untrained"}, "quality": {"weights": "/models/mine.pth"}},
    }
    app = {"name": "bgserve", "import_path": "deployments.app:build_app", "args": args}
    config.write_text(yaml.safe_dump({"applications": [app]}))
    assert weights_cli.main(["fetch", "--config", str(config)]) == 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["ckpt_fast.pth"]  # balanced/quality: none
    out = capsys.readouterr().out
    assert "balanced: weights 'untrained' (nothing to fetch)" in out and "fast: OK" in out
    try_config = Path(__file__).resolve().parents[2] / "configs" / "try.yaml"
    assert weights_cli.main(["fetch", "--config", str(try_config), "--dir", str(tmp_path / "empty")]) == 0
    assert not (tmp_path / "empty").exists()  # nothing downloaded, nothing needed


def test_a_download_reports_its_progress_then_verifying(server: Server, tmp_path: Path) -> None:
    reports: list[tuple[str, str, float | None]] = []
    resolve(checkpoint(f"{server.url}/good"), AUTO, tmp_path, report=lambda *r: reports.append(r))
    phases = [phase for phase, _, _ in reports]
    assert phases[-1] == "verifying" and "downloading" in phases
    done = [r for r in reports if r[0] == "downloading"][-1]
    assert done[2] == 1.0 and done[1].startswith("100% of") and "MB/s" in done[1]
    reports.clear()
    resolve(checkpoint(f"{server.url}/good"), AUTO, tmp_path, report=lambda *r: reports.append(r))
    assert [phase for phase, _, _ in reports] == ["verifying"]  # cached: checked, not downloaded


def test_transfer_progress_reports_percent_and_rate_at_most_every_interval() -> None:
    from serve_app.startup import TransferProgress

    reports: list[tuple[str, str, float | None]] = []
    transfer = TransferProgress(lambda *r: reports.append(r), total=4_000_000, every_s=3600)
    for _ in range(3):
        transfer.add(1_000_000)
    assert reports == []  # within the interval and not finished: quiet
    transfer.add(1_000_000)
    ((phase, detail, fraction),) = reports
    assert phase == "downloading" and detail.startswith("100% of 4 MB at") and fraction == 1.0
