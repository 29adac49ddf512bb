"""The debug report: a terminal table ranked worst first, and a self-contained HTML page with the
error along depth (report.py's conventions: inline PNG, escaped tables, atomic writes)."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Sequence

from .fix import FixResult
from .metrics import Metric
from .result import DebugResult, Row

HEAD = ["#", "tensor", "op", "candidate node", "match", "own cos", "own SQNR", "out SQNR",
        "acc cos", "acc SQNR", "added SQNR"]


def _db(x: float | None, inf: str = "exact") -> str:
    if x is None:
        return "-"
    if x == math.inf:
        return inf
    if x == -math.inf:
        return "NaN/inf"
    return f"{x:.1f} dB"


def _cos(m: Metric | None) -> str:
    if m is None:
        return "-"
    return f"{m.cosine:.6f}" if m.finite else "NaN/inf"


def _short(s: str, n: int = 40) -> str:
    return s if len(s) <= n else "…" + s[-(n - 1):]


def rows_for(result: DebugResult, top: int, by: str) -> list[list[str]]:
    out = []
    for i, r in enumerate(result.ranked(by)[:top], 1):
        out.append([str(i), _short(r.pair.ref), r.pair.op_type, _short(r.pair.cand_node, 32),
                    r.pair.how, _cos(r.own), _db(r.own.sqnr_db if r.own else None),
                    _db(r.impact.sqnr_db if r.impact else None), _cos(r.acc),
                    _db(r.acc.sqnr_db if r.acc else None), _db(r.added_db, "none")])
    return out


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def summary(result: DebugResult) -> list[str]:
    n_own = sum(1 for r in result.rows if r.own is not None)
    out = [f"{result.candidate} on {result.target} vs {result.reference} on "
           f"{result.reference_target}: {len(result.rows)} tensors matched "
           f"({', '.join(f'{k} {v}' for k, v in _hows(result.rows).items())}), {n_own} layers "
           f"run alone; {result.batches} batch(es)",
           f"{result.seconds:.1f} s, {result.chunks} chunk(s), at most "
           f"{result.max_chunk_mb:.1f} MB of tensors held at once, peak RSS "
           f"{result.peak_rss_mb:.0f} MB"]
    return out + list(result.notes)


def _hows(rows: Sequence[Row]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.pair.how] = out.get(r.pair.how, 0) + 1
    return out


def worst_line(result: DebugResult, top: int = 3) -> str:
    """"worst layers by own error: TENSOR (node NODE, OP, own SQNR x dB, acc cosine y); ..." """
    items = []
    for r in result.ranked("introduced")[:top]:
        m = r.own or r.acc
        items.append(f"{r.pair.ref} (node {r.pair.cand_node or '?'} {r.pair.op_type}: own SQNR "
                     f"{_db(m.sqnr_db if m else None)} acc cosine {_cos(r.acc)})")
    return "worst layers by own error: " + ", ".join(items) if items else "no layer matched"


def fix_lines(fr: FixResult) -> list[str]:
    goal = fr.goal
    out = [f"fix ({goal}): full int8 {goal.metric} {fr.score_full:.6f} -> "
           f"{fr.score:.6f} keeping {len(fr.kept)} of {fr.quantized_layers} quantized layers "
           f"in float ({fr.kept_share:.1%}){'' if fr.met else ' — GOAL NOT MET'}"]
    if fr.kept:
        out.append("kept in float: " + ", ".join(fr.kept))
    out.append(f"recipe: {fr.recipe}")
    t = fr.timing
    if t:
        share = t["share_of_int8_speedup"]
        out.append(f"on {t['target']} (interleaved): full int8 {t['speedup_full_int8']:.2f}x, "
                   f"fixed {t['speedup_fixed']:.2f}x vs the reference; fixed runs at "
                   f"{t['fixed_vs_full_int8']:.2f}x the full int8 speed"
                   + ("" if share is None else f" ({share:.0%} of its speedup)"))
    return out


def depth_png(result: DebugResult) -> bytes:
    """SQNR along depth: accumulated and introduced, one point per matched tensor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def cap(m: Metric | None) -> float | None:  # exact (infinite SQNR) points are not drawn
        return None if m is None or not m.finite or m.sqnr_db == math.inf else m.sqnr_db

    xs = list(range(len(result.rows)))
    acc = [cap(r.acc) for r in result.rows]
    own = [cap(r.own) for r in result.rows]
    imp = [cap(r.impact) for r in result.rows]
    fig, ax = plt.subplots(figsize=(9, 4.6), dpi=110)
    ax.plot([x for x, v in zip(xs, acc) if v is not None], [v for v in acc if v is not None],
            color="#d62728", lw=1.3, marker=".", label="accumulated (whole candidate)")
    ax.scatter([x for x, v in zip(xs, own) if v is not None], [v for v in own if v is not None],
               color="#1f77b4", s=16, zorder=3, label="introduced (layer alone)")
    ax.scatter([x for x, v in zip(xs, imp) if v is not None], [v for v in imp if v is not None],
               color="#2ca02c", marker="x", s=18, zorder=3,
               label="at the outputs (layer's own error alone)")
    worst = result.ranked("introduced")[:3]
    index = {r.pair.ref: i for i, r in enumerate(result.rows)}
    for k, r in enumerate(worst):
        m = r.own or r.acc
        if cap(m) is not None:
            ax.annotate(_short(r.pair.ref, 28), (index[r.pair.ref], cap(m)), fontsize=7,
                        xytext=(-60, -14 - 10 * k), textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "color": "#888", "lw": 0.6})
    ax.set_xlabel("matched tensor, in topological order")
    ax.set_ylabel("SQNR vs reference, dB (higher is closer)")
    ax.set_title("error along depth (exact tensors not drawn)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_html(result: DebugResult, fr: FixResult | None, by: str, top: int) -> str:
    from ..report.html import _CSS, _html_table

    img = base64.b64encode(depth_png(result)).decode()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>deploykit debug: "
             f"{html.escape(result.candidate)}</title><style>{_CSS}</style></head><body>",
             "<h1>deploykit debug report</h1>"]
    parts += [f'<p class="summary">{html.escape(s)}</p>' for s in summary(result)]
    if fr is not None:
        parts += [f'<p class="summary">{html.escape(s)}</p>' for s in fix_lines(fr)]
    parts.append(f'<h2>Error along depth</h2><img id="depth" alt="SQNR along depth" '
                 f'src="data:image/png;base64,{img}">')
    parts.append(f"<h2>Worst {min(top, len(result.rows))} (ranked by {html.escape(by)} error)"
                 "</h2>" + _html_table(HEAD, rows_for(result, top, by), "ranked"))
    every = [[str(r.pair.depth), r.pair.ref, r.pair.op_type, r.pair.cand_node, r.pair.how,
              _cos(r.own), _db(r.own.sqnr_db if r.own else None),
              _db(r.impact.sqnr_db if r.impact else None), _cos(r.acc),
              _db(r.acc.sqnr_db if r.acc else None), _db(r.added_db, "none"), r.note or ""]
             for r in result.rows]
    parts.append("<h2>Every matched tensor, in depth order</h2>"
                 + _html_table(["depth", *HEAD[1:], "note"], every, "all"))
    parts.append("</body></html>")
    return "\n".join(parts)


def to_json(result: DebugResult, fr: FixResult | None) -> dict[str, Any]:
    """Strict JSON: every non-finite float (an open-ended CI bound, an exact SQNR) is null."""
    d = result.to_dict()
    d["fix"] = None if fr is None else fr.to_dict()
    return _strict(d)


def _strict(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x
