"""The search report: one self-contained HTML file (Pareto plot embedded as a PNG, report/pareto.py)
and the same tables (report/search_text.py) in Markdown for CI logs. Input is the `search.json` a
search writes, so a report can be re-rendered any time without measuring anything."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import InputError
from .pareto import pareto_png
from .search_text import (candidate_rows, candidate_table, env_rows, per_op_table, recovery_rows,
                          summary_lines)


def load_search(path: str | Path) -> dict[str, Any]:
    """search.json from a file or from the search's output folder."""
    p = Path(path)
    if p.is_dir():
        p = p / "search.json"
    if not p.exists():
        raise InputError(f"search result not found: {p} (run `deploykit search ... -o DIR` first)")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read search result {p}: {e}") from None
    if not isinstance(data, dict) or data.get("kind") != "deploykit-search":
        raise InputError(f"{p} is not a deploykit search result")
    redo = "re-run `deploykit search MODEL -o DIR` to write a complete one"
    if data.get("schema") != 1:
        raise InputError(f"{p} has search schema {data.get('schema')!r}, not 1; {redo}")
    for key, kind in SEARCH_KEYS.items():
        if not isinstance(data.get(key), kind):
            raise InputError(f"{p} is incomplete: '{key}' is missing or not a "
                             f"{kind.__name__ if isinstance(kind, type) else 'valid value'}; "
                             f"{redo}")
    if not data["candidates"] or not all(isinstance(c, dict) for c in data["candidates"]):
        raise InputError(f"{p} is malformed: no candidates (the first is the model as given), "
                         f"or one that is not an object; {redo}")
    return data


# what every renderer reads: the top level of search.json (search.SearchResult.to_dict)
SEARCH_KEYS = {"model": str, "target": str, "config": dict, "candidates": list, "pareto": list,
               "recommendation": (dict, type(None)), "predictor": dict, "cost": dict,
               "env": dict, "per_op": dict, "notes": list}


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(esc(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:8px 0 20px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f0f0f0}
p.summary{margin:4px 0}"""


def render_html(data: Mapping[str, Any], png: bytes) -> str:
    """The recommendation first, then each runtime's best, the Pareto plot, the search's cost, the
    candidates (sortable, filterable; the ones not timed folded) and the details."""
    from . import interactive as ui

    head, pairs = candidate_rows(data)
    ohead, orows = per_op_table(data)
    img = base64.b64encode(png).decode()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>deploykit search: "
             f"{html.escape(Path(data['model']).name)}</title><style>{_CSS}\n{ui.CSS}</style>"
             "</head><body>", "<h1>deploykit search report</h1>"]
    skip = ("Recommendation:", "Alternative on", "Not searched:")
    lines = [s for s in summary_lines({**data, "notes": []}) if not s.startswith(skip)]
    parts.append(f'<p class="summary">{html.escape(lines[0])}</p>')
    parts.append(ui.recommendation_box(data))
    parts.append("<h2>Runtimes</h2>" + ui.runtime_table(data))
    parts.append(f'<h2>Pareto front</h2><img id="pareto" alt="Pareto plot" '
                 f'src="data:image/png;base64,{img}">')
    parts.append("<h2>Search</h2>"
                 + "".join(f'<p class="summary">{html.escape(s)}</p>' for s in lines[1:])
                 + ui.notes_section(data.get("notes") or ()))
    rec_rows = recovery_rows(data)
    if rec_rows:
        parts.append("<h2>Recovered by distillation</h2>" + _html_table(
            ["candidate", "status", "fidelity before", "fidelity after", "seconds",
             "training steps"],
            [[n, st, f"{b:.5f}", f"{a:.5f}", f"{s_:.1f}", str(e)]
             for n, st, b, a, s_, e, _ in rec_rows], "recovery"))
    parts.append("<h2>Candidates</h2>" + ui.candidates_section(head, pairs))
    parts.append("<h2>Per-op breakdown: baseline vs recommendation</h2>"
                 + (_html_table(ohead, orows, "per-op") if orows else "<p>no recommendation</p>"))
    parts.append("<h2>Environment</h2>" + _html_table(["key", "value"], env_rows(data), "env"))
    parts.append(ui.JS)
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(data: Mapping[str, Any], png_name: str | None = "pareto.png") -> str:
    head, rows = candidate_table(data)
    ohead, orows = per_op_table(data)
    out = ["# deploykit search report", ""]
    out += [f"- {s}" for s in summary_lines(data)]
    if png_name:
        out += ["", f"![Pareto plot]({png_name})"]
    out += ["", "## Candidates", "", _md_table(head, rows), ""]
    if orows:
        out += ["## Per-op breakdown: baseline vs recommendation", "", _md_table(ohead, orows), ""]
    out += ["## Environment", "", _md_table(["key", "value"], env_rows(data)), ""]
    return "\n".join(out)


def write_report(data: Mapping[str, Any], outdir: str | Path, outs=None) -> dict[str, Path]:
    """report.html (self-contained), report.md and pareto.png in `outdir`: staged in `outs`
    (outputs.Outputs) when given, else written together or not at all."""
    from ..outputs import Outputs

    outdir = Path(outdir)
    paths = {"html": outdir / "report.html", "markdown": outdir / "report.md",
             "png": outdir / "pareto.png"}
    try:
        png = pareto_png(data)
        html, md = render_html(data, png), render_markdown(data, paths["png"].name)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise InputError(f"the search result is malformed ({type(e).__name__}: {e}); re-run "
                         "`deploykit search MODEL -o DIR` to write a complete one") from None
    with Outputs() as own:
        stage = outs if outs is not None else own
        stage.bytes(paths["png"], png)
        stage.text(paths["html"], html)
        stage.text(paths["markdown"], md)
        own.commit()
    return paths
