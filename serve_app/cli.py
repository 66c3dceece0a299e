"""``bgserve-remove``: remove the backgrounds of a file, a folder (recursively) or a glob through a running service,
with a progress bar, resume and a summary. Built on ``serve_app.client``.

    bgserve-remove photos/ --out cutouts/                       # every image under photos/, rgba PNGs
    bgserve-remove 'shots/*.jpg' --tier fast --effect white --format jpeg --out white/
    bgserve-remove photo.jpg --url http://gpu-box:8000 --api-key "$KEY"
    bgserve-remove products/ --effect background --background studio.jpg --format jpeg --out on-studio/
    bgserve-remove scans/ --effect mask --threshold 0.5 --crop --crop-margin 5% --out masks/

Outputs are named ``<name>_<effect>.<ext>`` (as transparent-background's CLI names them), in ``--out`` (the
input's folder structure kept). An output that exists is skipped, so a second run resumes where the first
stopped. Each file is written to a temporary name and renamed when complete: an interrupted run (Ctrl-C) leaves
no half-written output. The exit status is 0 when every image was done or skipped, 1 when any failed, 2 for arguments
that cannot work (refused before any request), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from serve_app.client import DEFAULT_URL, Client, RemoveError, auth_headers, checked_url

# What the service reads, and .heic (the service says it does not read it: better than skipping it in silence).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".avif", ".gif", ".bmp", ".tif", ".tiff", ".pnm", ".ppm", ".pgm", ".pbm"}
    | {".tga", ".heic"}
)
EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
# The service's effects (checked against serve_app.schemas in the tests: this module stays light, for a client's
# machine); `background` puts every subject on the one image --background names.
EFFECTS = ("rgba", "mask", "color", "blur", "green", "white", "overlay", "background")
# Two fast-tier batches in flight (max_batch_size 4): the replica starts the next while the ingress encodes the last.
DEFAULT_CONCURRENCY = 8
# A restart of the service is ~30-40 s of refused connections and 503s (Retry-After: 5): 12 tries span ~1.5-2.5 min.
DEFAULT_RETRIES = 12
PART_PREFIX, PART_SUFFIX = ".bgserve-", ".part"  # an output being written
STALE_PART_S = 3600.0
DEFAULT_TIMEOUT_S = 600.0  # a quality-tier photo on a few CPU cores takes minutes
QUEUED_PER_SLOT = 2  # jobs waiting per request in flight: a folder of 100,000 images is not queued at once
MULTIPART_FRAMING = 512  # bytes of a request body besides its two images: boundaries and part headers
# The service's options the CLI sends, the same with every image (argparse's names are the service's).
SENT_OPTIONS = (
    "tier",
    "effect",
    "format",
    "color",
    "threshold",
    "reverse",
    "crop",
    "crop_margin",
    "refine",
    "blur_sigma",
    "quality",
    "lossless",
)
# Answers every other image would get too: the run stops rather than fail each one (a wrong key or URL). By the
# service's JSON code: a plain-text 404 may be a starting Serve without the proxy guard, which a retry rides out.
FATAL_CODES = {"unauthorized": 401, "not_found": 404}
FATAL_REASONS = {401: "the API key is refused", 404: "the URL has no such service"}
UMASK = os.umask(0o022)  # read once, at import (changing it is process-wide, not for threads to do)
os.umask(UMASK)


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: dict[Path, str] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds else 0.0
        return (
            f"{self.done} done, {self.skipped} skipped (already there), {len(self.failed)} failed in "
            f"{self.seconds:.1f} s ({rate:.2f} images/s)"
        )

    def report(self, stream: TextIO) -> None:
        """The summary line, then each failure with its reason."""
        print(self.line(), file=stream)
        for image, reason in self.failed.items():
            print(f"  failed: {image}: {reason}", file=stream)


def glob_base(pattern: Path) -> Path:
    """A glob's part before its first wildcard: the folder it searches, which its matches are relative to."""
    return Path(*itertools.takewhile(lambda part: not glob.has_magic(part), pattern.parts))


def find_inputs(patterns: list[str]) -> list[tuple[Path, Path]]:
    """(image, its path relative to what was named) for each file, folder (recursively) or glob, sorted. A folder
    keeps only image suffixes; a file named on its own is always taken (the service says if it is no image)."""
    found: dict[Path, Path] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                    found.setdefault(file, file.relative_to(path))
        elif path.is_file():
            found.setdefault(path, Path(path.name))
        else:  # a glob: paths kept relative to its part before the first wildcard
            base = glob_base(path)
            for match in sorted(glob.glob(pattern, recursive=True)):
                if Path(match).is_file():
                    found.setdefault(Path(match), Path(match).relative_to(base))
    return sorted(found.items())


def unmatched(patterns: list[str]) -> list[str]:
    """The inputs named that are no file or folder, and no glob that matches anything: a typo, not an empty run."""
    return [p for p in patterns if not Path(p).exists() and not glob.glob(p, recursive=True)]


def named_folders(patterns: list[str]) -> list[Path]:
    """The folders the inputs are searched in: each folder named, and each glob's part before its first wildcard."""
    folders = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            folders.append(path.resolve())
        elif not path.is_file():
            folders.append(glob_base(path).resolve())
    return folders


def earlier_outputs(inputs: list[tuple[Path, Path]], patterns: list[str], out: Path) -> set[Path]:
    """Files under ``out`` where ``out`` lies inside a folder searched for inputs: an earlier run's outputs, of any
    effect. Taken as inputs, each run cut out the last one's cut-outs (out/out/photo_rgba_mask.png, and deeper)."""
    out = out.resolve()
    if not any(out != folder and out.is_relative_to(folder) for folder in named_folders(patterns)):
        return set()
    named = named_files(patterns)  # a file named on its own is taken
    return {image for image, _ in inputs if image.resolve().is_relative_to(out) and image.resolve() not in named}


def named_files(patterns: list[str]) -> set[Path]:
    """The files named on their own (not found in a folder or by a glob): always inputs."""
    return {Path(p).resolve() for p in patterns if Path(p).is_file()}


def output_path(relative: Path, out: Path, effect: str, fmt: str) -> Path:
    return out / relative.parent / f"{relative.stem}_{effect}.{EXTENSIONS[fmt]}"


def sweep_stale_parts(folders: set[Path]) -> int:
    """Remove temporary outputs a killed run left (SIGTERM, SIGKILL, a second Ctrl-C mid-write) in ``folders``,
    once older than STALE_PART_S: a run writing beside this one keeps its own."""
    removed = 0
    for folder in folders:
        for part in folder.glob(f"{PART_PREFIX}*{PART_SUFFIX}") if folder.is_dir() else ():
            try:
                if time.time() - part.stat().st_mtime > STALE_PART_S:
                    part.unlink()
                    removed += 1
            except OSError:  # gone already, or not ours to remove
                continue
    return removed


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place: readers (and a resumed run) see the
    whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A short name: an output name near the file system's 255 bytes still gets a temporary one.
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=PART_PREFIX, suffix=PART_SUFFIX)
    try:
        os.fchmod(handle, 0o666 & ~UMASK)  # as an ordinary new file (mkstemp makes it 0600)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bgserve-remove", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or globs")
    parser.add_argument("--url", default=os.environ.get("BGSERVE_URL", DEFAULT_URL), help="the service ($BGSERVE_URL)")
    parser.add_argument("--api-key", default=os.environ.get("BGSERVE_API_KEY"), help="($BGSERVE_API_KEY)")
    parser.add_argument("--out", type=Path, default=Path("."), help="output folder (default: here)")
    parser.add_argument("--tier", choices=("fast", "balanced", "quality"), help="default: the service's")
    parser.add_argument("--effect", default="rgba", choices=EFFECTS)
    parser.add_argument(
        "--color",
        help="for --effect color: #rrggbb or #rgb (the # may be left out; an alpha may follow: #rrggbbaa, "
        "#rgba), a CSS name, or r,g,b[,a]",
    )
    parser.add_argument(
        "--background",
        type=Path,
        help="for --effect background: the image every subject goes on (sent with each; resized to cover each "
        "photo; where it is transparent, so are PNG and WebP outputs; JPEG ones are on white there)",
    )
    parser.add_argument("--format", default="png", choices=tuple(EXTENSIONS))
    # The service's own options, passed as they are (the service checks their values: a value it refuses stops the
    # run at the first answer, since every image is sent it).
    parser.add_argument(
        "--threshold",
        type=float,
        help="a hard mask: alpha 1 where the model's is above this (0-1), else 0 (as transparent-background's)",
    )
    parser.add_argument("--reverse", action="store_true", help="keep the background, remove the subject")
    parser.add_argument("--crop", action="store_true", help="crop each output to its subject's box")
    parser.add_argument(
        "--crop-margin",
        help="with --crop: pixels (12) or a percentage of the subject's longer side (10%%) kept around it",
    )
    parser.add_argument(
        "--refine", choices=("fast", "full", "none"), help="rgba's edge colours where the alpha is soft"
    )
    parser.add_argument("--blur-sigma", type=float, help="for --effect blur: the Gaussian's sigma, over 0, at most 100")
    parser.add_argument("--quality", type=int, help="for --format jpeg or webp: the encoder's quality, 1-100")
    parser.add_argument("--lossless", action="store_true", help="for --format webp: exact pixels, alpha included")
    parser.add_argument("--concurrency", type=at_least(1), default=DEFAULT_CONCURRENCY, help="requests in flight")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that exist (default: skip them)")
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for an answer to go on (then it is retried as a lost connection); default 600",
    )
    parser.add_argument(
        "--retries",
        type=at_least(0),
        default=DEFAULT_RETRIES,
        help="for 502/503/504 answers and lost connections (the default rides out a service restart)",
    )
    args = parser.parse_args(argv)
    try:
        auth_headers(args.api_key)
    except ValueError as exc:
        parser.error(f"--api-key: {exc}")
    for flag, given, usable, needs in [  # an option the run's other choices would leave unused: said, not ignored
        ("--color", args.color is not None, args.effect == "color", f"--effect color (the effect is {args.effect})"),
        ("--crop-margin", args.crop_margin is not None, args.crop, "--crop"),
        ("--blur-sigma", args.blur_sigma is not None, args.effect == "blur", "--effect blur"),
        ("--refine", args.refine is not None, args.effect == "rgba" and args.threshold is None, "soft rgba edges"),
        ("--lossless", args.lossless, args.format == "webp", "--format webp"),
        (
            "--quality",
            args.quality is not None,
            args.format in ("jpeg", "webp") and not args.lossless,
            "a lossy format",
        ),
    ]:
        if given and not usable:
            parser.error(f"{flag} is for {needs}")
    if (args.background is not None) != (args.effect == "background"):  # one without the other cannot work
        parser.error("--effect background and --background IMAGE go together")
    if args.background is not None and not args.background.is_file():
        parser.error(f"--background: no such file: {args.background}")
    try:
        checked_url(args.url)
    except ValueError as exc:
        parser.error(f"--url: {exc}")
    return args


def fatal_reason(error: RemoveError, background_bytes: int = 0) -> str | None:
    """Why every other image would get this answer too (the run stops), else None. ``background_bytes``: the size of
    the --background image, sent with each."""
    if FATAL_CODES.get(error.code) == error.status:
        return FATAL_REASONS[error.status]
    if 400 <= error.status < 500 and error.message.startswith("background image:"):
        return "the service refuses the --background image"
    refused = re.match(r"(\w+): ", error.message)  # the service's 422 for a value, "name: why" (not an image's own)
    if error.status == 422 and refused is not None and refused.group(1) in SENT_OPTIONS:
        return f"the service refuses --{refused.group(1).replace('_', '-')}"
    if error.status == 422 and re.match(r"tier '\w+' is not served here", error.message):
        return "the service does not serve that --tier"
    # The body limit (deployments/uploads.py's two messages), which the background alone passes.
    limit = re.match(r"upload (?:is \d+ bytes; this service takes at most|exceeds) (\d+)", error.message)
    if error.status == 413 and limit is not None and background_bytes + MULTIPART_FRAMING >= int(limit.group(1)):
        return "the --background image alone is over the service's upload limit"
    return None


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds over 0")
    return value


def at_least(least: int) -> Callable[[str], int]:
    def number(text: str) -> int:  # argparse names it in its message: "invalid number value: 'abc'"
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is under {least}")
        return value

    return number


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = unmatched(args.inputs)
    if missing:
        print(f"bgserve-remove: no such file or folder, and no match: {' '.join(missing)}", file=sys.stderr)
        return 2
    inputs = find_inputs(args.inputs)
    if args.background is not None:  # found in a folder searched, it is no photo to put on itself
        named_inputs, backdrop = named_files(args.inputs), args.background.resolve()
        inputs = [
            (image, relative)
            for image, relative in inputs
            if image.resolve() != backdrop or image.resolve() in named_inputs
        ]
    if not inputs:
        print(f"no images found in {' '.join(args.inputs)}", file=sys.stderr)
        return 1
    summary = Summary()
    todo = []
    claimed: dict[Path, Path] = {}  # output -> the input that makes it
    # An earlier run's output of this effect (photo_rgba.png or photo_rgba.webp beside photo.jpg, with --out on
    # the inputs' folder) is no input; one of another effect is (shirt_white.jpg beside shirt.jpg may well be a
    # photo), as is a photo whose own name only looks like an output (product_rgba.png, no product.* among them).
    targets = {
        output_path(relative, args.out, args.effect, fmt).resolve() for _, relative in inputs for fmt in EXTENSIONS
    }
    skipped = earlier_outputs(inputs, args.inputs, args.out)
    named = named_files(args.inputs)
    beside = {image for image, _ in inputs if image.resolve() in targets and image.resolve() not in named}
    earlier = skipped | beside
    if earlier:
        print(f"{len(earlier)} files not taken as inputs: earlier outputs", file=sys.stderr)
    inputs = [(image, relative) for image, relative in inputs if image not in earlier]  # the union once, not per image
    for image, relative in inputs:
        target = output_path(relative, args.out, args.effect, args.format)
        if target in claimed:  # photo.jpg and photo.png would both make photo_rgba.png
            summary.failed[image] = f"{target} is also {claimed[target]}'s output: rename one of them"
        elif target.exists() and not args.overwrite:
            summary.skipped += 1
        else:
            todo.append((image, target))
        claimed.setdefault(target, image)
    options = {name: getattr(args, name) for name in SENT_OPTIONS}
    options.update({flag: True if getattr(args, flag) else None for flag in ("reverse", "crop", "lossless")})
    try:
        background = None if args.background is None else args.background.read_bytes()  # read once, sent with each
    except OSError as exc:
        print(f"bgserve-remove: --background: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    fatal: list[str] = []
    started = time.perf_counter()
    client = Client(args.url, api_key=args.api_key, retries=args.retries, timeout_s=args.timeout)
    swept = sweep_stale_parts({target.parent for target in claimed})
    if swept:
        print(f"removed {swept} temporary files an interrupted run left", file=sys.stderr)

    def one(image: Path, target: Path) -> None:
        if stop.is_set():  # interrupted: not started
            raise InterruptedError
        result = client.remove(image, background=background, **options)
        write_atomically(target, result.content)

    progress = tqdm(total=len(inputs), initial=summary.skipped + len(summary.failed), unit="image", dynamic_ncols=True)
    pool = ThreadPoolExecutor(max(1, args.concurrency))
    waiting = iter(todo)
    pending: dict[Future[None], Path] = {}

    def refill() -> None:
        """Keep QUEUED_PER_SLOT jobs per request in flight submitted, no more (each wait looks at all of them)."""
        while not stop.is_set() and len(pending) < QUEUED_PER_SLOT * max(1, args.concurrency):
            job = next(waiting, None)
            if job is None:
                return
            pending[pool.submit(one, *job)] = job[0]

    def tally(future: Future[None]) -> None:
        image = pending.pop(future)
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or isinstance(error, InterruptedError):  # interrupted before it started
            return
        if error is None:
            summary.done += 1
        else:
            reason = str(error) if isinstance(error, RemoveError) else f"{type(error).__name__}: {error}"
            summary.failed[image] = reason
            progress.write(f"failed: {image}: {reason}")
            why = fatal_reason(error, len(background or b"")) if isinstance(error, RemoveError) else None
            if why is not None and not fatal:
                fatal.append(f"stopped: {why} ({reason}); every other image would fail too")
                stop.set()  # nothing more is sent; the requests in flight finish
                client.stop_retrying()
        progress.update(1)

    def finish(stream: TextIO) -> None:
        progress.close()
        summary.seconds = time.perf_counter() - started
        for line in fatal:
            print(line, file=stream)
        summary.report(stream)

    try:
        refill()
        while pending:
            finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                tally(future)
            refill()
    except KeyboardInterrupt:
        stop.set()
        client.stop_retrying()  # a request waiting to be tried again gives up now
        print(
            "\ninterrupted: waiting for the requests in flight (no output is left half-written; Ctrl-C again: stop "
            "without them)",
            file=sys.stderr,
        )
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:  # the second: those in flight are left (each output is whole or absent)
            for future in [f for f in pending if f.done()]:
                tally(future)
            finish(sys.stderr)
            print(f"  {len(pending)} requests in flight were left without their answers", file=sys.stderr)
            sys.stderr.flush()
            os._exit(130)  # the pool's threads would hold the exit until their requests end
        for future in list(pending):  # those in flight finished (written or failed): counted too
            tally(future)
        client.close()
        finish(sys.stderr)
        return 130
    pool.shutdown()
    client.close()
    finish(sys.stdout)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
