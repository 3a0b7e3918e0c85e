#!/usr/bin/env python3
"""Render the committed, executed notebooks to static HTML pages with an index.

Usage::

    python tools/build_site.py [--out site] [NOTEBOOK ...]

Each notebook becomes ``OUT/<name>.html`` (nbconvert's HTML exporter, outputs as
committed: nothing is re-executed; interactive plotly outputs are left to their static
twins, which every notebook draws); ``OUT/index.html`` lists them with the first line
of each notebook's aim. ``docs/method.md`` is copied to ``OUT/docs/method.md`` so that the
notebooks' links to it resolve. The pages need no Jupyter to read.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

REPO = Path(__file__).resolve().parents[1]


def aim_of(nb) -> tuple[str, str]:
    """(title, first sentence of the aim) from the notebook's first markdown cell."""
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    title = next((line.lstrip("# ").strip() for line in first.splitlines() if line.startswith("#")), "")
    m = re.search(r"\*\*Aim\.\*\*\s*(.+?)(?:\n\n|$)", first, re.S)
    aim = " ".join(m.group(1).split()) if m else ""
    return title, aim.split(". ")[0].rstrip(".") + "." if aim else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "site")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((REPO / "notebooks").glob("*.ipynb"))
    out = args.out
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    rows = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
        target = out / "notebooks" / f"{path.stem}.html"
        target.write_text(body, encoding="utf-8")
        title, aim = aim_of(nb)
        rows.append(f'<li><a href="notebooks/{target.name}">{html.escape(title or path.stem)}</a>'
                    f"<br><small>{html.escape(aim)}</small></li>")
        print(f"{path.name} -> {target.relative_to(out)}")
    docs = REPO / "docs"
    if docs.is_dir():
        shutil.copytree(docs, out / "docs", dirs_exist_ok=True)
    index = ("<!doctype html><html><head><meta charset='utf-8'><title>cryofire_nb notebooks</title>"
             "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.4}"
             "li{margin:0.8em 0}</style></head><body><h1>cryofire_nb notebooks</h1>"
             "<p>Executed notebooks, rendered as committed. Background: "
             "<a href='docs/method.md'>docs/method.md</a>.</p><ol>" + "".join(rows) + "</ol></body></html>")
    (out / "index.html").write_text(index, encoding="utf-8")
    print(f"{out / 'index.html'}: {len(rows)} notebook(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
