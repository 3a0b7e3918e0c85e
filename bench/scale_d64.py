"""A stack far larger than the machine's memory, through the default command with
``--lazy`` and a time limit, then ``infer --lazy`` over all of it.

For each size (``--copies``: lines of one simulated 64-px stack of 10,000 particles in a
``.txt`` list, CTF table repeated to match), the script runs, as a user would type them::

    cryofire-nb train LIST.txt --ctf CTF.pkl -o RUN --lazy --time-limit MINUTES
    cryofire-nb infer RUN LIST.txt --ctf CTF.pkl --lazy -o RUN/infer

each under ``/usr/bin/time -v`` (its "Maximum resident set size" is the peak), samples the
resident memory every second as well, and records the wall time against the limit, the
exit status, when the console first printed and when a progress bar first moved, the
files written, and the console's lines about the plan (the pose table's size, the time
kept for the final pass, warnings). It measures memory and time discipline, not
accuracy (the copies repeat the same particles). Writes ``bench/results/scale_d64.json``.

    .venv/bin/cryofire-nb simulate data_demo/adk_continuous_d32.yaml --box 64 -o bench/out/d64
    .venv/bin/python bench/scale_d64.py --stack bench/out/d64 --case 10:30 --case 40:60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
from common import git_commit  # noqa: E402
from lazy_memory import make_list, rss_bytes  # noqa: E402

PLAN_LINES = ("pose table on", "kept for the final pass", "warning:", "init search", "heterogeneous refinement",
              "distillation ended", "wrote", "stopped")


def watch(cmd: list[str], log: Path, timeout_s: float) -> dict:
    """Run ``cmd`` under /usr/bin/time -v; timestamps of output, RSS samples, peak."""
    t0 = time.time()
    full = ["/usr/bin/time", "-v", *cmd]
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    first = {"output": None, "progress": None}
    text: list[str] = []

    def reader():
        with open(log, "wb") as f:
            while True:
                chunk = proc.stdout.read1(4096)
                if not chunk:
                    break
                now = time.time() - t0
                f.write(chunk)
                s = chunk.decode(errors="replace")
                first["output"] = first["output"] if first["output"] is not None else now
                if first["progress"] is None and re.search(r"(it|img|chunk|batch)/s|s/(it|chunk|img|batch)", s):
                    first["progress"] = now
                text.append(s)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    peak_sampled = 0
    trajectory: list[tuple[int, float]] = []  # (s, resident GiB) about once a minute
    while proc.poll() is None and time.time() - t0 < timeout_s:
        try:
            child = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
            now_rss = rss_bytes(child)
            peak_sampled = max(peak_sampled, now_rss)
            if not trajectory or time.time() - t0 >= trajectory[-1][0] + 60:
                trajectory.append((round(time.time() - t0), round(now_rss / 2 ** 30, 3)))
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(1.0)
    killed = proc.poll() is None
    if killed:
        proc.kill()
    proc.wait()
    th.join(timeout=10)
    wall = time.time() - t0
    out = "".join(text)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    lines = [ln.strip() for ln in re.split(r"[\r\n]", out) if any(k in ln for k in PLAN_LINES)]
    return {"command": " ".join(cmd), "wall_s": round(wall, 1), "exit_code": proc.returncode, "killed": killed,
            "peak_rss_gib": round(int(m.group(1)) * 1024 / 2 ** 30, 3) if m else None,
            "peak_rss_sampled_gib": round(peak_sampled / 2 ** 30, 3), "rss_gib_each_minute": trajectory,
            "first_console_output_s": first["output"], "first_progress_bar_s": first["progress"],
            "plan_lines": lines[:40]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", type=Path, required=True, help="folder of a simulated set (particles.mrcs, ctf.pkl)")
    ap.add_argument("--case", action="append", metavar="COPIES:MINUTES", required=True,
                    help="copies of the stack in the list and the train command's --time-limit (repeatable)")
    ap.add_argument("-o", "--out", type=Path, default=HERE / "out" / "scale_d64")
    ap.add_argument("--result", type=Path, default=HERE / "results" / "scale_d64.json")
    ap.add_argument("--infer-only", action="store_true",
                    help="run only infer --lazy, on the run folders an earlier train left in --out; the "
                         "entries are added to the result file's earlier runs")
    ap.add_argument("--train-only", action="store_true",
                    help="run only train --lazy (infer over the same size measured before); the entries are "
                         "added to the result file's earlier runs")
    args = ap.parse_args()
    python = sys.executable
    runs = []
    if (args.infer_only or args.train_only) and args.result.exists():
        runs = json.loads(args.result.read_text())["runs"]
    for case in args.case:
        copies, minutes = case.split(":")
        lst, ctf, n = make_list(args.stack, int(copies), args.out)
        run = args.out / f"run_n{n}"
        commit = git_commit(HERE)
        if args.infer_only:
            if not (run / "weights.pt").is_file():
                raise SystemExit(f"{run}: no trained run here; run this case without --infer-only first")
            out = run / f"infer_{commit}"
            shutil.rmtree(out, ignore_errors=True)
            infer = watch([python, "-m", "cryofire_nb", "infer", str(run), str(lst), "--ctf", str(ctf), "--lazy",
                           "-o", str(out)], args.out / f"infer_n{n}_{commit}.log", 7200)
            infer["files_written"] = sorted(p.name for p in out.iterdir()) if out.exists() else []
            infer["images_per_s"] = round(n / infer["wall_s"], 1)
            runs.append({"particles": n, "commit": commit, "infer_only": True, "infer": infer})
            write_result(args.result, runs)
            continue
        if run.exists():
            shutil.rmtree(run)
        train = watch([python, "-m", "cryofire_nb", "train", str(lst), "--ctf", str(ctf), "-o", str(run), "--lazy",
                       "--time-limit", minutes], args.out / f"train_n{n}.log", float(minutes) * 60 * 1.5 + 300)
        train["time_limit_s"] = float(minutes) * 60
        train["within_limit"] = train["wall_s"] <= train["time_limit_s"]
        train["files_written"] = sorted(p.name for p in run.iterdir()) if run.exists() else []
        if args.train_only:
            runs.append({"particles": n, "commit": commit, "train_only": True, "train": train})
            write_result(args.result, runs)
            continue
        infer = watch([python, "-m", "cryofire_nb", "infer", str(run), str(lst), "--ctf", str(ctf), "--lazy",
                       "-o", str(run / "infer")], args.out / f"infer_n{n}.log", 7200)
        infer["files_written"] = sorted(p.name for p in (run / "infer").iterdir()) if (run / "infer").exists() else []
        infer["images_per_s"] = round(n / infer["wall_s"], 1)
        entry = {"particles": n, "commit": commit, "train": train, "infer": infer}
        runs.append(entry)
        print(json.dumps(entry, indent=1), flush=True)
        write_result(args.result, runs)  # after every case: a partial result is kept


def write_result(path: Path, runs: list) -> None:
    common.write_result(path, {"box": 64, "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                                    f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
              "meminfo": Path("/proc/meminfo").read_text().splitlines()[:3],
              "load_average_at_end": os.getloadavg(), "runs": runs})


if __name__ == "__main__":
    main()
