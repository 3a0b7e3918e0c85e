#!/usr/bin/env python3
"""Browser check of notebook 05: JupyterLab + headless Chromium driven by Playwright.

1. Copy ``notebooks/05_conformation_landscape.ipynb`` into the output folder (JupyterLab
   autosaves; the committed notebook must not change) and start JupyterLab on
   127.0.0.1 at a free port with a random token, with runtime/workspace folders in a
   temporary directory.
2. Open the copy in the system Chromium (``--chromium``, headless; Playwright's own
   browser downloads are never used), run all cells from the Run menu and wait for the
   last cell's output.
3. Wait for the plotly FigureWidget scatter to render, save ``screenshot.png``; then
   the interactive isosurface (WebGL), save ``screenshot_volume.png`` and check that the
   scene is not blank.
4. Draw a lasso on the scatter with the mouse and wait for the kernel's
   ``SelectionSaver`` to write ``notebooks/_work/05_conformation_landscape/selection/
   lasso.{pkl,star,cs}``; check that the three files describe the same non-empty set of
   particles; save ``screenshot_selected.png``.

Exit status 0 when every step passed, 1 otherwise (the failing step is printed). The
server and the browser are always shut down.

Usage::

    python tools/browser_check.py [--chromium /usr/bin/chromium] [--out browser_out] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "05_conformation_landscape.ipynb"
SELECTION = REPO / "notebooks" / "_work" / "05_conformation_landscape" / "selection"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAST_OUTPUT = "notebook run time:"  # printed by the notebook's last cell
SCATTER_TITLE = "lasso or box-select"  # in the FigureWidget's title
VOLUME_TITLE = "PC1 ends"  # in the interactive isosurface's title


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout:.0f} s")


def start_lab(root: Path, port: int, token: str, tmp: Path, log) -> subprocess.Popen:
    labconfig = tmp / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    # no "get notified about Jupyter news?" prompt over the page (and no news fetch: offline)
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    # render every cell (no windowing), so outputs far from the viewport are in the page
    tracker = tmp / "user-settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_CONFIG_DIR=str(tmp / "config"),
               IPYTHONDIR=str(tmp / "ipython"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
           "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
           f"--LabApp.user_settings_dir={tmp / 'user-settings'}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]  # offline: no PyPI queries
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers often run as root
        cmd.append("--allow-root")
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def write_without_outputs(src: Path, dst: Path) -> None:
    """Copy a notebook with outputs, counts and widget state removed (a fresh run)."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, dst)


def kernel_states(base: str, token: str) -> list[str]:
    with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=5) as r:
        return [k["execution_state"] for k in json.loads(r.read())]


def wait_for_run(page, base: str, token: str, timeout_s: float) -> float:
    """Wait until the last cell printed LAST_OUTPUT; fail early on an error output or when
    the kernel has gone idle without it. Returns the seconds waited."""
    done = page.locator(".jp-OutputArea-output", has_text=re.compile(re.escape(LAST_OUTPUT) + r" \d+ s"))
    failed = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                          has_text=re.compile(r"Traceback|Error"))
    t0 = time.monotonic()
    idle_since = None
    while time.monotonic() - t0 < timeout_s:
        if done.count():
            return time.monotonic() - t0
        if failed.count():
            raise AssertionError("a cell failed: " + failed.first.inner_text()[-500:])
        states = kernel_states(base, token)
        idle = bool(states) and all(st == "idle" for st in states)
        idle_since = (idle_since or time.monotonic()) if idle else None
        if idle_since is not None and time.monotonic() - idle_since > 30 and time.monotonic() - t0 > 30:
            raise AssertionError(f"the kernel is idle but '{LAST_OUTPUT}' never appeared (run not started?)")
        page.wait_for_timeout(1000)
    raise TimeoutError(f"the notebook did not finish within {timeout_s:.0f} s")


def check_selection_files(since: float, n_particles: int) -> str:
    """The lasso's three files exist, are newer than ``since`` and agree; a summary line."""
    import numpy as np

    from cryofire_nb.io import read_cs, read_indices, read_star

    paths = [SELECTION / f"lasso.{ext}" for ext in ("pkl", "star", "cs")]
    for p in paths:
        if not p.is_file() or p.stat().st_mtime < since:
            raise AssertionError(f"{p} was not written by the lasso")
    ind = read_indices(paths[0])
    star, cs = read_star(paths[1]), read_cs(paths[2])
    if not 0 < ind.size < n_particles:
        raise AssertionError(f"the lasso selected {ind.size} of {n_particles} particles (expected a part)")
    if len(star) != ind.size or len(cs) != ind.size:
        raise AssertionError(f"selection sizes differ: pkl {ind.size}, star {len(star)}, cs {len(cs)}")
    if not np.array_equal(cs["blob/idx"].astype(np.int64), ind):
        raise AssertionError("the .cs subset does not hold the selected stack indices")
    return f"{ind.size} of {n_particles} particles in lasso.pkl / lasso.star / lasso.cs"


def screenshot_volume(page, path: Path) -> str:
    """Screenshot the interactive isosurface (a WebGL plotly scene) and check that it drew
    something: a blank or failed WebGL canvas is one flat colour."""
    import numpy as np
    from PIL import Image

    plot = page.locator(".js-plotly-plot").filter(has_text=VOLUME_TITLE).first
    plot.scroll_into_view_if_needed()
    plot.locator(".gl-container canvas, canvas").first.wait_for(timeout=60_000)
    page.wait_for_timeout(2000)  # the scene draws after its canvas appears
    plot.screenshot(path=str(path))
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    h, w, _ = img.shape
    scene = img[h // 6: 5 * h // 6, w // 6: 5 * w // 6]  # away from the title and the margins
    background = np.median(scene.reshape(-1, 3), axis=0)
    drawn = float((np.abs(scene - background).sum(-1) > 30).mean())
    if drawn < 0.01:
        raise AssertionError(f"the isosurface scene is blank ({drawn:.1%} of its pixels differ from the background)")
    gold = float(((scene[..., 0] > scene[..., 2] + 40) & (scene[..., 1] > scene[..., 2])).mean())
    blue = float((scene[..., 2] > scene[..., 0] + 40).mean())
    return f"{w}x{h} px, {drawn:.1%} of the scene drawn ({gold:.1%} gold, {blue:.1%} blue)"


def run(args) -> int:
    from playwright.sync_api import sync_playwright

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("screenshot.png", "screenshot_volume.png", "screenshot_selected.png", "failure.png"):
        (out / stale).unlink(missing_ok=True)
    nb_copy = out / NOTEBOOK.name
    write_without_outputs(NOTEBOOK, nb_copy)
    rel = nb_copy.relative_to(REPO)
    shutil.rmtree(SELECTION, ignore_errors=True)
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    step = "start JupyterLab"
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cryofire_browser_") as tmp_name, \
            open(out / "jupyterlab.log", "w") as log:
        tmp = Path(tmp_name)
        lab = start_lab(REPO, port, token, tmp, log)
        try:
            wait_for_server(f"{base}/api/status?token={token}", lab, timeout=120)
            print(f"JupyterLab at {base} (pid {lab.pid})", flush=True)
            with sync_playwright() as pw:
                step = "launch Chromium"
                browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                console = open(out / "console.log", "w")
                page.on("console", lambda msg: console.write(f"[{msg.type}] {msg.text}\n"))
                page.on("pageerror", lambda exc: console.write(f"[pageerror] {exc}\n"))
                try:
                    page.set_default_timeout(60_000)
                    step = "open the notebook"
                    page.goto(f"{base}/lab/tree/{rel.as_posix()}?token={token}", wait_until="domcontentloaded")
                    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
                    page.get_by_text(re.compile(r"\| Idle")).first.wait_for(timeout=120_000)  # kernel ready
                    step = "run all cells"
                    page.get_by_role("menuitem", name="Run", exact=True).click()
                    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
                    print(f"all cells ran in {wait_for_run(page, base, token, args.timeout):.0f} s", flush=True)
                    step = "render the plotly widget"
                    plot = page.locator(".js-plotly-plot").filter(has_text=SCATTER_TITLE).first
                    plot.scroll_into_view_if_needed()
                    plot.locator(".scatterlayer .points path").first.wait_for(timeout=60_000)
                    n_points = plot.locator(".scatterlayer .points path").count()
                    print(f"scatter rendered with {n_points} points", flush=True)
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(out / "screenshot.png"))
                    step = "render the isosurface"
                    print(f"isosurface: {screenshot_volume(page, out / 'screenshot_volume.png')}", flush=True)
                    plot.scroll_into_view_if_needed()
                    step = "lasso selection"
                    drag = plot.locator(".nsewdrag").first
                    box = drag.bounding_box()
                    if box is None:
                        raise AssertionError("the plot's drag layer has no size")
                    t_sel = time.time()
                    # a pentagon over the right part of the plot (the high-PC1 end); plotly closes it.
                    # Move at a human pace: plotly.js throttles the lasso, and a mouse-up straight
                    # after fast moves can end the drag without a 'plotly_selected' event.
                    corners = [(0.55, 0.08), (0.98, 0.08), (0.98, 0.95), (0.72, 0.95), (0.55, 0.5), (0.56, 0.12)]
                    polygon = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in corners]
                    for attempt in range(1, 4):  # retried: a lost selection event should not fail the check
                        page.mouse.move(polygon[0][0] - 5, polygon[0][1])
                        page.mouse.move(*polygon[0], steps=3)
                        page.mouse.down()
                        for x, y in polygon[1:]:
                            page.mouse.move(x, y, steps=12)
                            page.wait_for_timeout(100)
                        page.wait_for_timeout(300)
                        page.mouse.up()
                        deadline = time.monotonic() + 30
                        while not (SELECTION / "lasso.cs").is_file() and time.monotonic() < deadline:
                            page.wait_for_timeout(500)
                        if (SELECTION / "lasso.cs").is_file():
                            break
                        print(f"lasso attempt {attempt}: no files after 30 s, kernel {kernel_states(base, token)}",
                              flush=True)
                    time.sleep(1.0)  # let the last of the three writes finish
                    summary = check_selection_files(t_sel - 1, n_points)
                    print(f"lasso: {summary}", flush=True)
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(out / "screenshot_selected.png"))
                    step = "done"
                except Exception:
                    try:  # what the page showed when the step failed
                        page.screenshot(path=str(out / "failure.png"))
                    except Exception:  # noqa: BLE001 - the page may be gone
                        pass
                    raise
                finally:
                    browser.close()
                    console.close()
        except Exception as err:  # noqa: BLE001 - report the step that failed
            print(f"browser check FAILED at '{step}': {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        finally:
            stop(lab)
    print(f"browser check passed in {time.monotonic() - t0:.0f} s; screenshots in {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    parser.add_argument("--out", default=str(REPO / "browser_out"), help="screenshots and logs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed for running all cells")
    args = parser.parse_args(argv)
    if not Path(args.chromium).is_file():
        print(f"error: {args.chromium} not found (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 1
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
