import hmac
import os
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.datastructures import Headers

from deployments.access import presented_key
from serve_app.auth import ApiKeys


def test_off_unless_a_source_is_configured() -> None:
    assert not ApiKeys().enabled and ApiKeys(env_var="X").enabled and ApiKeys(file=Path("k")).enabled


def test_keys_from_the_variable_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGSERVE_TEST_KEYS", " alpha, beta ,")
    file = tmp_path / "keys"
    file.write_text("# rotated 2026-11\ngamma\n\n")
    keys = ApiKeys(env_var="BGSERVE_TEST_KEYS", file=file)
    assert keys.keys() == [b"alpha", b"beta", b"gamma"]
    assert keys.accepts("beta") and keys.accepts("gamma")
    for wrong in ("", "alph", "alpha ", "# rotated 2026-11", "delta"):
        assert not keys.accepts(wrong), wrong


def test_an_indented_comment_is_no_key_and_a_non_ascii_key_works(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text("  # retired 2024: old-key\nclé-secrète\n", encoding="utf-8")
    keys = ApiKeys(file=file)
    assert keys.keys() == ["clé-secrète".encode()]
    assert not keys.accepts("# retired 2024: old-key")
    # Starlette decodes a header's bytes as Latin-1: the client's UTF-8 bytes of the key arrive so, and match.
    sent = Headers(raw=[(b"x-api-key", "clé-secrète".encode())])
    assert keys.accepts(presented_key(sent))


def test_a_rewritten_file_takes_effect_without_a_restart(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text("old-key\n")
    keys = ApiKeys(file=file)
    assert keys.accepts("old-key")
    file.write_text("new-key-after-rotation\n")
    assert keys.accepts("new-key-after-rotation") and not keys.accepts("old-key")
    file.unlink()  # mid-rotation: the last keys read stay in force
    assert keys.accepts("new-key-after-rotation")


def test_a_key_file_in_another_encoding_never_locks_out_the_valid_keys(tmp_path: Path) -> None:
    """A Latin-1 byte in the file made every request a 500 (UnicodeDecodeError), valid keys included."""
    file = tmp_path / "keys"
    file.write_bytes("good-key\nclé-latin1\n".encode("latin-1"))
    keys = ApiKeys(file=file)
    assert keys.accepts("good-key")
    # The file's bytes are the key: a client sending those same bytes (Starlette decodes them as Latin-1) matches.
    assert keys.accepts(presented_key(Headers(raw=[(b"x-api-key", "clé-latin1".encode("latin-1"))])))


def test_a_key_variable_with_bytes_that_are_not_utf8_is_compared_as_given() -> None:
    script = (
        "from serve_app.auth import ApiKeys; k = ApiKeys(env_var='BGSERVE_TEST_KEYS'); "
        "print(k.accepts('good'), k.accepts('cl\\xe9'))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    env_bytes = {os.fsencode(k): os.fsencode(v) for k, v in env.items()} | {b"BGSERVE_TEST_KEYS": b"good,cl\xe9"}
    out = subprocess.run([sys.executable, "-c", script], env=env_bytes, capture_output=True, check=True)  # type: ignore[arg-type]
    assert out.stdout.split() == [b"True", b"True"]


def test_unicode_whitespace_around_a_key_is_not_part_of_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A no-break space pasted after a key was stripped before keys were read as bytes; then it was not."""
    file = tmp_path / "keys"
    file.write_text("key-one\u00a0\n")
    monkeypatch.setenv("BGSERVE_TEST_KEYS", "key-two\u2003, key-three")
    assert ApiKeys(env_var="BGSERVE_TEST_KEYS", file=file).keys() == [b"key-two", b"key-three", b"key-one"]


def test_a_key_file_saved_with_a_bom_keeps_its_first_key(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_bytes("\ufeffkey-one\r\nkey-two\r\n".encode())
    assert ApiKeys(file=file).keys() == [b"key-one", b"key-two"]
    # Notepad's "Unicode": UTF-16 with a BOM, either way round (Python writes the little-endian one's itself).
    for text in ("key-one\r\nclé\r\n".encode("utf-16"), "\ufeffkey-one\r\nclé\r\n".encode("utf-16-be")):
        file.write_bytes(text)
        assert ApiKeys(file=file).keys() == [b"key-one", "clé".encode()], text[:2]


def test_a_rotation_that_keeps_the_size_and_the_time_is_seen(tmp_path: Path) -> None:
    """cp -p, rsync -t or tar x keep the time; a generated key keeps the length: only the inode tells."""
    file = tmp_path / "keys"
    file.write_text("A" * 16 + "\n")
    keys = ApiKeys(file=file)
    assert keys.accepts("A" * 16)
    stat = file.stat()
    staged = tmp_path / "keys.new"
    staged.write_text("B" * 16 + "\n")
    os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(staged, file)
    assert keys.accepts("B" * 16) and not keys.accepts("A" * 16)


def test_an_unreadable_key_file_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = ApiKeys(file=tmp_path / "missing")
    for _ in range(3):
        assert not keys.accepts("any")
    assert [r.levelname for r in caplog.records if "API key file" in r.getMessage()] == ["WARNING"]


def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest for each key, all of them even when the first matches: no early exit to time."""
    monkeypatch.setenv("BGSERVE_TEST_KEYS", "first,second,third")
    compared: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr("serve_app.auth.hmac.compare_digest", spy)
    assert ApiKeys(env_var="BGSERVE_TEST_KEYS").accepts("first")
    assert compared == [b"first", b"second", b"third"]


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer  abc "}, "abc"),
        ({"x-api-key": "abc"}, "abc"),
        ({"authorization": "Basic abc", "x-api-key": "def"}, "def"),
        ({}, ""),
    ],
)
def test_the_key_comes_from_bearer_or_x_api_key(headers: dict[str, str], key: str) -> None:
    assert presented_key(Headers(headers)) == key


def test_only_the_probes_docs_and_page_are_open_and_exactly_those() -> None:
    """The open paths were prefixes: a later /healthz/details or /docs-admin would have been open without a key."""
    from deployments.access import ApiKeyCheck

    def is_open(path: str, root_path: str = "") -> bool:
        return ApiKeyCheck._open({"type": "http", "path": root_path + path, "root_path": root_path})

    for path in ("/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"):
        assert is_open(path) and is_open(path, "/cutouts"), path
    assert is_open("/static-offline-docs/swagger-ui.css")
    for path in ("/healthz/details", "/docs-admin", "/readyzz", "/v1/tiers", "/v1/remove", "/api/remove", "//"):
        assert not is_open(path), path
