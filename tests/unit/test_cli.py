"""The CLI's file handling without a service (tests/integration/test_clients.py runs it against the real one)."""

from pathlib import Path

import pytest

from serve_app import cli


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
