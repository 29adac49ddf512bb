"""`deploykit report`: render a search result as self-contained HTML and Markdown."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write the HTML + Markdown report of a search (Pareto plot, candidates, per-op, env)"
DESCRIPTION = """Render OUTDIR/search.json (written by `deploykit search`) as report.html (one
self-contained file: the Pareto plot is an embedded PNG), report.md and pareto.png. Nothing is
measured again."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("result", metavar="SEARCH", help="search output folder or its search.json")
    p.add_argument("-o", "--out", default=None, metavar="DIR",
                   help="where to write the report (default: beside search.json)")


def run(args: argparse.Namespace) -> int:
    from ..report.html import load_search, write_report

    data = load_search(args.result)
    src = Path(args.result)
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent)
    paths = write_report(data, out)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
