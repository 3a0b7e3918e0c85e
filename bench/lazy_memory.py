"""Memory and first output of ``cryofire-nb train --lazy`` on a stack far larger than one file:
``--copies`` lines of one simulated stack in a ``.txt`` list (100,000 particles at 64 px by
default), CTF table repeated to match.

For each checkout given (``--repo``, default this one; pass an older checkout beside it to
compare), the script runs the default command with ``--lazy`` for ``--seconds`` and
samples the resident memory of the process every second, and records when the console
first printed anything and when a progress bar first moved. The run is then stopped
(SIGTERM, which a run answers by saving its checkpoint: the time that takes is recorded
too). It measures memory and responsiveness only, not accuracy. ``rss_gib_at`` gives
[all resident, anonymous] GiB: the file-backed rest is pages of the memory-mapped stack.

    .venv/bin/cryofire-nb simulate data_demo/adk_continuous_d32.yaml --box 64 -o bench/out/d64
    .venv/bin/python bench/lazy_memory.py --stack bench/out/d64 --case .:1 --case .:10 \
        --case /path/to/older/checkout:10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import git_commit, write_result  # noqa: E402


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of ``pid`` and its children (``VmRSS``; ``RssAnon``: arrays the
    process made, ``RssFile``: pages of memory-mapped files, which the kernel can drop),
    0 once it has exited."""
    total = 0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def make_list(stack_dir: Path, copies: int, out: Path) -> tuple[Path, Path, int]:
    """A .txt list of ``copies`` lines naming the same stack, and a CTF table to match."""
    from cryofire_nb.io.pkl import read_ctf, write_ctf
    from cryofire_nb.io.records import CtfParams

    out.mkdir(parents=True, exist_ok=True)
    stack = (stack_dir / "particles.mrcs").resolve()
    lst = out / f"n{copies}x.txt"
    lst.write_text("".join(f"{stack}\n" for _ in range(copies)))
    table = read_ctf(stack_dir / "ctf.pkl").table
    ctf = out / f"ctf_n{copies}x.pkl"
    write_ctf(ctf, CtfParams(np.tile(table, (copies, 1))))
    return lst, ctf, copies * len(table)


#: How each case keeps the particles: the command-line flags that say so.
MODES = {"lazy": ["--lazy"], "memory": [], "half": ["--half"]}


def run_one(repo: Path, lst: Path, ctf: Path, outdir: Path, seconds: float, mode: str = "lazy",
            minutes: float = 5) -> dict:
    python = HERE.parent / ".venv" / "bin" / "python"  # run in ``repo``: ``-m`` imports the package found there
    cmd = [str(python), "-m", "cryofire_nb.cli", "train", str(lst), "--ctf", str(ctf), "-o", str(outdir),
           *MODES[mode], "--time-limit", f"{minutes:g}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first_output = [None]
    first_progress = [None]
    log: list[str] = []

    def reader():
        buf = b""
        while True:
            chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(1)
            if not chunk:
                break
            now = time.time() - t0
            if first_output[0] is None:
                first_output[0] = now
            buf += chunk
            text = chunk.decode(errors="replace")
            if first_progress[0] is None and ("it/s" in text or "chunk/s" in text or "img/s" in text
                                              or "s/it" in text or "s/chunk" in text):
                first_progress[0] = now
            log.append(f"[{now:7.1f}s] {text}")

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    samples = []
    while proc.poll() is None and time.time() - t0 < seconds:
        samples.append((round(time.time() - t0, 1), rss_bytes(proc.pid), rss_bytes(proc.pid, "RssAnon")))
        time.sleep(1.0)
    stopped_by = "exited" if proc.poll() is not None else "SIGTERM"
    t_stop = time.time()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            stopped_by = "SIGKILL after 300 s"
    th.join(timeout=5)
    peak = max((r for _, r, _ in samples), default=0)
    peak_anon = max((a for _, _, a in samples), default=0)
    return {
        "repo": str(repo),
        "commit": git_commit(repo),
        "command": " ".join(cmd[2:]),
        "seconds_watched": seconds,
        "first_console_output_s": first_output[0],
        "first_progress_bar_s": first_progress[0],
        "peak_rss_gib": round(peak / 2 ** 30, 3),
        "peak_rss_anon_gib": round(peak_anon / 2 ** 30, 3),
        "rss_gib_at": {f"{t:.0f}s": [round(r / 2 ** 30, 3), round(a / 2 ** 30, 3)]
                       for t, r, a in samples[:: max(1, len(samples) // 12)]},
        "stopped_by": stopped_by,
        "stop_to_exit_s": round(time.time() - t_stop, 1),
        "exit_code": proc.returncode,
        "files_written": sorted(p.name for p in outdir.iterdir()) if outdir.exists() else [],
        "console_tail": "".join(log)[-3000:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", type=Path, required=True, help="folder of a simulated set (particles.mrcs, ctf.pkl)")
    ap.add_argument("--case", action="append", metavar="REPO:COPIES[:MODE]",
                    help="a checkout to run (this checkout's .venv runs it), the number of copies of the "
                         "stack in its list, and how the particles are kept: lazy (--lazy, the default), memory "
                         "(in memory) or half (--half) (repeatable; default .:1 and .:10)")
    ap.add_argument("--time-limit", type=float, default=5, help="the runs' --time-limit in minutes")
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("-o", "--out", type=Path, default=HERE / "out" / "lazy_memory")
    ap.add_argument("--result", type=Path, default=HERE / "results" / "lazy_memory_d64.json")
    args = ap.parse_args()
    runs = []
    for i, case in enumerate(args.case or [f"{HERE.parent}:1", f"{HERE.parent}:10"]):
        parts = case.split(":")
        mode = parts.pop() if parts[-1] in MODES else "lazy"
        repo, copies = ":".join(parts[:-1]), parts[-1]
        lst, ctf, n = make_list(args.stack, int(copies), args.out)
        outdir = args.out / f"run{i}"
        if outdir.exists():
            import shutil
            shutil.rmtree(outdir)
        run = run_one(Path(repo).resolve(), lst, ctf, outdir, args.seconds, mode, args.time_limit)
        run["particles"], run["mode"] = n, mode
        runs.append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "console_tail"}, indent=1), flush=True)
    from cryofire_nb.io import ImageSource
    result = {"box": ImageSource(args.stack / "particles.mrcs", lazy=True).d, "machine": platform.node(),
              "cpus": os.cpu_count(), "meminfo": Path("/proc/meminfo").read_text().splitlines()[:3],
              "load_average_at_end": os.getloadavg(), "runs": runs}
    write_result(args.result, result)


if __name__ == "__main__":
    main()
