"""Resolve a tier's checkpoint to a verified file: a configured path, else the cache directory, else a download.

Downloads stream to a temporary file beside the target with a progress bar, are checked against the published
md5 and only then renamed into place (atomic on one filesystem), so a broken transfer never leaves a file that
looks complete. A checkpoint without a published checksum (the nightly one) gets its sha256 recorded in a
``<name>.sha256`` file at its first download or placement, and checked against that record afterwards.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import http.client
import logging
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from tqdm import tqdm

from serve_app.catalogue import Checkpoint
from serve_app.errors import ChecksumMismatchError, WeightsUnavailableError
from serve_app.startup import VERIFYING, Progress, TransferProgress, no_progress

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "BGSERVE_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path("~/.cache/bgserve/weights")
AUTO = "auto"  # cache directory, then download
UNTRAINED = "untrained"  # a seeded random model: smoke runs and benchmarks only
_CHUNK = 1 << 20
# A download's temporary file is written every chunk; one untouched this long was left by a killed process.
STALE_PART_S = 600
# How a PyTorch checkpoint starts: a zip archive (torch.save since 1.6) or a pickle (the legacy format). A
# checkpoint without a published checksum is recorded as it came, so this keeps a proxy's login page or a cut
# copy from being recorded as the real thing.
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


@dataclass(frozen=True)
class ResolvedWeights:
    """What a runtime loads. ``path`` is None for the untrained model; ``label`` is what X-Weights reports."""

    path: Path | None
    label: str


def default_weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


def file_digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) of a file, read once."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def _sha256_record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _new_file(beside: Path, suffix: str = "") -> tuple[int, Path]:
    """A new hidden file beside ``beside`` (O_EXCL: no link followed), with the mode a plain file gets (0o666 less
    the umask): mkstemp's 0o600 left a checkpoint placed by root unreadable to the service's own user."""
    while True:
        path = beside.with_name(f".{beside.name}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), path
        except FileExistsError:
            continue


def _write_record(record: Path, sha256: str) -> None:
    """Write the sha256 record atomically, so a replica starting beside another never reads half of it."""
    handle, tmp = _new_file(record)
    with os.fdopen(handle, "w") as out:
        out.write(sha256 + "\n")
    os.replace(tmp, record)


def _check_looks_like_a_checkpoint(path: Path, what: str, then: str) -> None:
    with path.open("rb") as handle:
        head = handle.read(16)
    if not head.startswith(CHECKPOINT_MAGIC):
        raise ChecksumMismatchError(
            f"{what} is not a PyTorch checkpoint (it starts with {head!r}): a proxy's page, or a cut copy? {then}"
        )


def _cannot_write(directory: Path, exc: OSError) -> WeightsUnavailableError:
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}.get(exc.errno or 0, str(exc))
    return WeightsUnavailableError(
        f"could not write a checkpoint in {directory}: {why}. Free some space or make it writable, or choose another "
        f"weights directory (BGSERVE_WEIGHTS_DIR, or weights_dir in the config)."
    )


def verify(checkpoint: Checkpoint, path: Path) -> None:
    """Check a cached checkpoint against its published md5, or against the sha256 recorded when it arrived."""
    try:
        md5, sha256 = file_digests(path)
    except OSError as exc:
        raise WeightsUnavailableError(f"cannot read {path}: {exc}") from exc
    if checkpoint.md5 is not None:
        if md5 != checkpoint.md5:
            raise ChecksumMismatchError(
                f"{path} has md5 {md5}, but {checkpoint.filename} is published with md5 {checkpoint.md5}: the file "
                f"is damaged or is another checkpoint. Delete it and run `bgserve-weights fetch` again, or set the "
                f"tier's `weights:` to this file's path to load it as your own checkpoint without the check."
            )
        return
    record = _sha256_record(path)
    if not record.exists():
        _check_looks_like_a_checkpoint(
            path, str(path), "Delete it and run `bgserve-weights fetch` again (nothing was recorded)."
        )
        try:
            _write_record(record, sha256)
        except OSError as exc:  # a read-only mount of the weights: check what can be checked, record nothing
            logger.warning(
                "%s has no published checksum and its sha256 %s could not be recorded in %s (%s): it is loaded "
                "unchecked; record it once where the directory is writable (`bgserve-weights verify`)",
                checkpoint.filename,
                sha256,
                record,
                exc,
            )
            return
        logger.warning(
            "%s has no published checksum; recorded its sha256 %s in %s and will check it from now on",
            checkpoint.filename,
            sha256,
            record,
        )
        return
    expected = (record.read_text().split() or ["(nothing)"])[0]
    if sha256 != expected:
        raise ChecksumMismatchError(
            f"{path} has sha256 {sha256}, but {record} recorded {expected} when it was downloaded: the file changed "
            f"since. Delete both files and run `bgserve-weights fetch` again."
        )


def _copy_with_progress(
    source: BinaryIO, target: BinaryIO, total: int | None, desc: str, report: Progress = no_progress
) -> None:
    """Copy in chunks with a progress bar (and ``report``); a source that ends before ``total`` bytes is an error."""
    copied = 0
    transfer = TransferProgress(report, total)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as progress:
        while chunk := source.read(_CHUNK):
            try:
                target.write(chunk)
            except OSError as exc:  # this machine's disk, not the transfer: said so, not as "offline"
                raise _LocalWriteError() from exc
            copied += len(chunk)
            progress.update(len(chunk))
            transfer.add(len(chunk))
    if total is not None and copied != total:
        raise OSError(f"transfer ended after {copied} of {total} bytes")


class _LocalWriteError(Exception):
    """Writing the temporary file failed (its cause says why): not the network's fault."""


def _sweep_stale_parts(destination: Path) -> None:
    """Remove the temporary files that killed downloads left (a replica OOM-killed in a loop would otherwise fill the
    disk with hidden copies of a checkpoint); a live download writes its file every chunk, so it is never stale."""
    for part in destination.parent.glob(f".{glob.escape(destination.name)}.*.part"):
        try:
            if time.time() - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
                logger.info("removed %s, left by a download that did not finish", part)
        except OSError:
            continue


def _install(
    checkpoint: Checkpoint, write: Callable[[BinaryIO], None], destination: Path, report: Progress = no_progress
) -> Path:
    """Write through ``write(handle)`` into a temporary file beside ``destination``, verify, rename into place."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale_parts(destination)
        fd, tmp = _new_file(destination, suffix=".part")
    except OSError as exc:
        raise _cannot_write(destination.parent, exc) from exc
    try:
        handle = os.fdopen(fd, "wb")
        try:
            write(handle)
        except _LocalWriteError as exc:
            assert isinstance(exc.__cause__, OSError)
            raise _cannot_write(destination.parent, exc.__cause__) from exc.__cause__
        finally:
            try:  # the last buffered bytes are written here: a full disk may first say so now
                handle.close()
            except OSError as exc:
                raise _cannot_write(destination.parent, exc) from exc
        report(VERIFYING, checkpoint.filename, None)
        md5, sha256 = file_digests(tmp)
        if checkpoint.md5 is not None and md5 != checkpoint.md5:
            raise ChecksumMismatchError(
                f"{checkpoint.filename}: got md5 {md5}, expected {checkpoint.md5}; nothing was installed at "
                f"{destination}."
            )
        if checkpoint.md5 is None:
            _check_looks_like_a_checkpoint(
                tmp, f"{checkpoint.filename} as received", f"Nothing was installed at {destination}."
            )
        os.replace(tmp, destination)
        if checkpoint.md5 is None:
            try:
                _write_record(_sha256_record(destination), sha256)
            except OSError as exc:  # installed and checked; the record comes at the next start that can write it
                logger.warning(
                    "could not record the sha256 of %s (%s): it is recorded at a later start", destination, exc
                )
        return destination
    finally:
        tmp.unlink(missing_ok=True)


def download(
    checkpoint: Checkpoint, destination: Path, timeout_s: float = 30.0, report: Progress = no_progress
) -> Path:
    """Download ``checkpoint.url`` to ``destination`` (progress bar, checksum, atomic rename)."""
    logger.info("downloading %s from %s to %s", checkpoint.filename, checkpoint.url, destination)

    def write(handle: BinaryIO) -> None:
        with urllib.request.urlopen(checkpoint.url, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            _copy_with_progress(response, handle, int(length) if length else None, checkpoint.filename, report)

    try:
        return _install(checkpoint, write, destination, report)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # incl. timeouts, cut transfers
        raise WeightsUnavailableError(offline_help(checkpoint, destination, reason=str(exc))) from exc


def place(checkpoint: Checkpoint, source: Path, weights_dir: Path) -> Path:
    """Copy a checkpoint the user already has into the cache, verified like a download."""
    destination = weights_dir / checkpoint.filename

    def write(handle: BinaryIO) -> None:
        with source.open("rb") as src:
            _copy_with_progress(src, handle, source.stat().st_size, checkpoint.filename)

    try:
        return _install(checkpoint, write, destination)
    except OSError as exc:
        raise WeightsUnavailableError(f"could not place {source} at {destination}: {exc}") from exc


def offline_help(checkpoint: Checkpoint, destination: Path, reason: str) -> str:
    return (
        f"{checkpoint.filename} is not at {destination} and could not be downloaded ({reason}). "
        f"On a machine that can reach it, fetch {checkpoint.url} and put the file at {destination} "
        f"(`bgserve-weights place {checkpoint.filename} --dir {destination.parent}` checks and copies it), or run "
        f"`bgserve-weights fetch --dir {destination.parent}` where there is internet; "
        f"or set the tier's `weights:` to the path of a checkpoint you have. To try the service without any "
        f"checkpoint (untrained weights: it runs, but its masks mean nothing), run `scripts/serve.sh --try`."
    )


def configured_path(choice: str, weights_dir: Path) -> Path:
    path = Path(choice).expanduser()
    return path if path.is_absolute() else weights_dir / path


def weights_label(checkpoint: Checkpoint, choice: str) -> str:
    """What X-Weights and /v1/tiers report for a tier's ``weights`` setting: printable ASCII, as a header value must
    be (any other character of a file's name percent-encoded, as in a URL)."""
    if choice == UNTRAINED:
        return UNTRAINED
    name = checkpoint.filename if choice == AUTO else Path(choice).name
    return "".join(c if " " <= c <= "~" else quote(c) for c in name)


def weights_identity(checkpoint: Checkpoint, choice: str, weights_dir: Path) -> str:
    """What the masks' cache key and the ETags take the weights to be: a published checkpoint's name (its checksum
    is checked), or the whole path of one of the user's own (by its name alone, two checkpoints called model.pth in
    two folders shared cached masks and ETags). Not the file's size or time: the ingress would see a file
    retrained in place before the tier replicas load it, and key the old model's masks by the new file. Retrained
    weights go under a new name (README, Weights). Any bytes of a path come out printable."""
    if choice in (AUTO, UNTRAINED):
        return weights_label(checkpoint, choice)
    return os.fsencode(configured_path(choice, weights_dir)).decode("utf-8", "backslashreplace")


def resolve(
    checkpoint: Checkpoint,
    choice: str,
    weights_dir: Path,
    allow_download: bool = True,
    report: Progress = no_progress,
) -> ResolvedWeights:
    """Turn a tier's ``weights`` setting into a verified file.

    ``choice`` is ``auto`` (cache, then download), ``untrained``, or a path (absolute, or relative to
    ``weights_dir``) to a checkpoint of the user's own, loaded as given without a checksum.
    """
    label = weights_label(checkpoint, choice)
    if choice == UNTRAINED:
        return ResolvedWeights(path=None, label=label)
    if choice != AUTO:
        path = configured_path(choice, weights_dir)
        if not path.is_file():
            raise WeightsUnavailableError(f"weights file {path} (configured for {checkpoint.filename}) does not exist")
        return ResolvedWeights(path=path, label=label)
    path = weights_dir / checkpoint.filename
    _sweep_stale_parts(path)  # also when the checkpoint is there: a transfer killed after another one finished
    if path.is_file():
        report(VERIFYING, checkpoint.filename, None)
        verify(checkpoint, path)
    elif allow_download:
        download(checkpoint, path, report=report)
    else:
        raise WeightsUnavailableError(offline_help(checkpoint, path, reason="downloads are turned off"))
    return ResolvedWeights(path=path, label=label)
