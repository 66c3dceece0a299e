"""What the service's processes take from the CPU while it idles, per process, in one run.

On a 2-core box every tenth of a core that Ray and Serve use while idle is taken from the model, and more than
its share: the model's two threads wait for each other at every layer, so a thread preempted stalls both. This
starts the CPU config's fast tier as ``bench.serve`` does (as ``scripts/serve.sh`` would), once per controller
loop interval given, waits until it is ready and settled, and reads each process's CPU time from /proc over a window.

    python -m bench.idle_cpu                          # Serve's default loop (0.1 s) beside ours (0.5 s)
    python -m bench.idle_cpu --loops 0.5 --seconds 60
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ray
from ray import serve

from bench.serve import PORT, start_service
from tests.support.segmenting_weights import segmenting_checkpoint

TICKS = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> set[int]:
    """Every process under ``root``: the Ray this benchmark started (its GCS and raylet, their workers), not any other
    Ray on the machine."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def ray_processes() -> dict[int, str]:
    """pid -> name of each process of the Ray started here: a worker's own name (ray::...), a binary's (gcs_server,
    raylet) or a Python script's (dashboard.py, log_monitor.py, ...). Only argv[0] and the script are looked at:
    the raylet's arguments name the dashboard, the dashboard agent's name the raylet."""
    found = {}
    for pid in descendants(os.getpid()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        program = Path(argv[0]).name
        if argv[0].startswith("ray::") or program in ("gcs_server", "raylet"):
            found[pid] = argv[0].split()[0] if argv[0].startswith("ray::") else program
        else:
            scripts = [Path(a).name for a in argv[1:] if a.endswith(".py")]
            found[pid] = scripts[0] if scripts else "python -c (a Ray helper)" if "-c" in argv[1:2] else program
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def measure(seconds: float) -> dict[str, float]:
    """Percent of one core per process name (summed over processes of one name) over ``seconds``."""
    before = {}
    for pid in ray_processes():
        try:
            before[pid] = cpu_seconds(pid)
        except OSError:
            continue
    time.sleep(seconds)
    names = ray_processes()
    usage: dict[str, float] = {}
    for pid, start in before.items():
        try:
            used = cpu_seconds(pid) - start
        except OSError:
            continue
        usage[names.get(pid, "gone")] = usage.get(names.get(pid, "gone"), 0.0) + 100 * used / seconds
    return usage


def child(loop_s: str, seconds: float, settle_s: float) -> None:
    os.environ["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] = loop_s
    start_service(str(segmenting_checkpoint()[0]), {"fast": "openvino"}, ["fast"], Path(os.environ["BENCH_DIR"]))
    deadline = time.monotonic() + 300
    while httpx.get(f"http://127.0.0.1:{PORT}/readyz").status_code != 200:
        if time.monotonic() > deadline:
            sys.exit("the service did not get ready in 300 s")
        time.sleep(1)
    time.sleep(settle_s)  # past start-up, so the readiness thread has slowed to its steady pace
    usage = measure(seconds)
    for name, percent in sorted(usage.items(), key=lambda kv: -kv[1]):
        print(f"  {percent:5.2f} %  {name}")
    print(f"  {sum(usage.values()):5.2f} %  all of Ray and Serve (of one core)", flush=True)
    serve.shutdown()
    ray.shutdown()  # the Ray this child started, and only it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", default="0.1,0.5", help="Serve controller loop intervals to compare, in s")
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window")
    parser.add_argument("--settle", type=float, default=15.0, help="idle time before measuring")
    parser.add_argument("--weights-dir", default="/tmp/bench-idle-cpu", help="where OpenVINO's converted model lives")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds, args.settle)
        return
    for loop_s in args.loops.split(","):
        print(f"controller loop {loop_s} s, fast tier on openvino, idle:", flush=True)
        command = [sys.executable, "-m", "bench.idle_cpu", "--child", loop_s, "--seconds", str(args.seconds)]
        command += ["--settle", str(args.settle)]
        subprocess.run(command, check=True, env={**os.environ, "BENCH_DIR": args.weights_dir})


if __name__ == "__main__":
    main()
