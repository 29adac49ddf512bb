"""The search report: one self-contained HTML file (Pareto plot embedded as a PNG) and the same
tables in Markdown for CI logs. Input is the `search.json` a search writes, so a report can be
re-rendered any time without measuring anything."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import InputError

_FAMILY_COLORS = {"baseline": "#222222", "int8": "#1f77b4", "prune": "#2ca02c",
                  "lowrank": "#9467bd", "tucker": "#8c564b", "compact": "#e377c2"}


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


def _num(x: Any, fmt: str = "{:.3f}", none: str = "-") -> str:
    return none if x is None else fmt.format(x)


def _si(x: Any) -> str:
    if x is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _bytes(x: Any) -> str:
    if x is None:
        return "-"
    for unit, div in (("MB", 1 << 20), ("kB", 1 << 10)):
        if x >= div:
            return f"{x / div:.2f} {unit}"
    return f"{x} B"


def candidate_table(data: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the candidates table: measured first (fastest first), then the rest."""
    head, pairs = _candidate_rows(data)
    return head, [row for _, row in pairs]


def _candidate_rows(data: Mapping[str, Any]) -> tuple[list[str], list[tuple[dict, list[str]]]]:
    """The candidates table as (candidate, its row) pairs."""
    from .realized import verdict

    cands = data["candidates"]
    base = cands[0]
    rec_id = (data.get("recommendation") or {}).get("id")
    front = set(data.get("pareto", ()))
    head = ["candidate", "status", "params", "size", "FLOPs", "median ms (95% CI)", "predicted ms",
            "speedup", "fidelity", "verdict", "note"]
    order = sorted(cands, key=lambda c: (c["measured"] is None, (c["measured"] or {}).get(
        "median_ms", 0.0), c["status"] != "ok"))
    rows = []
    for c in order:
        if c["options"] and c["status"] != "ok":
            continue  # a model that failed fidelity fails it under every target option too
        m = c["measured"]
        st = c.get("stats") or {}
        speed = verd = "-"
        if m and base["measured"]:
            sp = base["measured"]["median_ms"] / m["median_ms"]
            speed = f"{sp:.2f}x"
            if c["id"] == rec_id:
                r = data["recommendation"]
                speed = f"{r['speedup']:.2f}x [{r['speedup_ci95'][0]:.2f}, {r['speedup_ci95'][1]:.2f}]"
                verd = r["verdict"] + " (interleaved)"
            elif c["id"] != base["id"]:
                lo, hi = _ci_ratio(base, c)
                verd = verdict(lo, hi) if lo is not None else "-"
        name = c["name"] + (" ★" if c["id"] == rec_id else "") + (" (front)" if c["id"] in front
                                                                  else "")
        ci = m["ci95_ms"] if m else None
        rows.append((c, [
            name, c["status"], _si(st.get("params")), _bytes(st.get("bytes")), _si(st.get("flops")),
            f"{m['median_ms']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if m else "-",
            _num(c.get("predicted_ms")), speed,
            _num(c.get("fidelity"), "{:.5f}"), verd,
            (c.get("reason") or "") + ("; reused from store" if c.get("reused") else ""),
        ]))
    return head, rows


def _ci_ratio(base, c):
    """Conservative speedup interval from the two medians' CIs (separate, non-interleaved runs;
    only the recommendation gets an interleaved bootstrap CI)."""
    bm, cm = base["measured"], c["measured"]
    if not (bm and cm):
        return None, None
    lo = bm["ci95_ms"][0] / cm["ci95_ms"][1]
    hi = bm["ci95_ms"][1] / cm["ci95_ms"][0]
    return lo, hi


def per_op_table(data: Mapping[str, Any], top: int = 12) -> tuple[list[str], list[list[str]]]:
    """Per op type: baseline ms vs recommendation ms (from the interleaved run's profiles)."""
    per_op = data.get("per_op") or {}

    def fold(ops):
        acc: dict[str, float] = {}
        for o in ops:
            acc[o["op_type"]] = acc.get(o["op_type"], 0.0) + o["total_ms"]
        return acc

    b, r = fold(per_op.get("baseline", ())), fold(per_op.get("recommendation", ()))
    types = sorted(set(b) | set(r), key=lambda t: -(b.get(t, 0.0) + r.get(t, 0.0)))[:top]
    head = ["op type", "baseline ms", "recommendation ms"]
    rows = [[t, _num(b.get(t)), _num(r.get(t))] for t in types]
    if types:
        rows.append(["total (profiled)", _num(sum(b.values())), _num(sum(r.values()))])
    return head, rows


def summary_lines(data: Mapping[str, Any]) -> list[str]:
    cfg, cost, pred = data["config"], data["cost"], data["predictor"]
    goal = f"budget {cfg['budget_ms']} ms" if cfg.get("budget_ms") else "fastest"
    lines = [f"Model: {data['model']} on target {data['target']} ({goal}, min fidelity "
             f"{cfg['min_fidelity']})"]
    rec = data.get("recommendation")
    if rec:
        lines.append(
            f"Recommendation: {rec['name']}: {rec['median_ms']:.3f} ms vs baseline "
            f"{rec['baseline_ms']:.3f} ms, speedup {rec['speedup']:.2f}x "
            f"[{rec['speedup_ci95'][0]:.2f}, {rec['speedup_ci95'][1]:.2f}] (interleaved), fidelity "
            f"{rec['fidelity']:.4f}, {rec['verdict']}")
    if data.get("infeasible"):
        lines.append(data["infeasible"])
    lines += alternative_lines(data)
    rec_rows = recovery_rows(data)
    if rec_rows:
        best = max(rec_rows, key=lambda r: r[3] - r[2])
        lines.append(f"Recovery by distillation (soft targets on the calibration inputs, "
                     f"{cfg.get('recover_budget_s', 0):g} s per pruned candidate"
                     + (f", {cfg['recover_final_s']:g} s for the final pick"
                        if cfg.get("recover_final_s") else "") + "): "
                     f"{sum(r[6] for r in rec_rows)} trained, "
                     f"{sum(r[4] for r in rec_rows):.0f} s in all; largest gain {best[0]}: "
                     f"fidelity {best[2]:.4f} -> {best[3]:.4f}")
    lines.append(
        f"Search cost: {cost['candidates']} candidates, {cost['fidelity_ok']} passed fidelity, "
        f"{cost['measured_whole']} measured whole "
        f"({cost['measured_whole'] / max(cost['fidelity_ok'], 1):.0%} of those that passed), "
        f"{cost['units_timed']} layer units timed ({cost['units_reused']} reused), "
        f"{cost['seconds']:.0f} s")
    if pred.get("mean_abs_rel_error") is not None:
        lines.append(f"Layer-table predictor error vs whole-model measurements: mean "
                     f"{pred['mean_abs_rel_error']:.1%}, max {pred['max_abs_rel_error']:.1%} over "
                     f"{pred['measured_whole']} candidates (each predicted before it was measured)"
                     + ("" if pred.get("rank_correlation") is None else
                        f"; rank correlation {pred['rank_correlation']:.2f}"))
    na = cost.get("netadapt")
    if na:
        kept = [it["chosen"] for it in na["iterations"] if it["chosen"]]
        lines.append(f"NetAdapt per-layer loop: {len(kept)} cuts kept from {na['proposals']} "
                     f"proposals over {na['layers']} layers"
                     + (f" ({'; '.join(kept)})" if kept else ""))
    lines += list(data.get("notes", ()))
    return lines


def recovery_rows(data: Mapping[str, Any]) -> list[tuple]:
    """(candidate, status, fidelity before, after, seconds, steps, trained) of every candidate
    built by torch-side pruning + distillation (its int8 compositions share the training)."""
    out = []
    for c in data["candidates"]:
        r = c.get("recovery")
        if not r or c.get("options") or "+int8" in c.get("family", ""):
            continue
        out.append((c["name"], c["status"], r["fidelity_before"], r["fidelity_after"],
                    r.get("seconds") or 0.0, r.get("steps") or 0, bool(r.get("steps"))))
    return out


def alternative_lines(data: Mapping[str, Any]) -> list[str]:
    """One line per other runtime searched (its best, measured interleaved with the baseline),
    and the runtimes installed here that were not searched."""
    rt = data.get("runtimes") or {}
    lines = []
    for a in data.get("alternatives") or ():
        if a.get("speedup") is None:
            lines.append(f"Alternative on {a['runtime']}: none ({a.get('reason')})")
            continue
        lo, hi = a["speedup_ci95"]
        lines.append(f"Alternative on {a['runtime']} (not the --target runtime): {a['name']}: "
                     f"{a['median_ms']:.3f} ms vs baseline {a['baseline_ms']:.3f} ms, speedup "
                     f"{a['speedup']:.2f}x [{lo:.2f}, {hi:.2f}] (interleaved), fidelity "
                     f"{a['fidelity']:.4f}")
    if rt.get("not_searched"):
        lines.append(f"Not searched: {', '.join(rt['not_searched'])} (installed; "
                     f"--runtimes {','.join(rt['searched'] + rt['not_searched'])} or "
                     "--any-runtime to compare)")
    return lines


def env_rows(data: Mapping[str, Any]) -> list[list[str]]:
    env = data.get("env") or {}
    rows = []
    for k in ("cpu_model", "cpu_flags", "logical_cores", "threads", "os", "python", "versions",
              "target", "target_config", "hostname"):
        if k in env:
            v = env[k]
            rows.append([k, json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)])
    return rows


def pareto_png(data: Mapping[str, Any]) -> bytes:
    """Latency vs fidelity: every measured candidate, the front, the recommendation, the budget."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(data)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def pareto_figure(data: Mapping[str, Any]):
    """The Pareto plot as a matplotlib figure (Agg), its legend beside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = data["candidates"]
    front = set(data.get("pareto", ()))
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    own = (data.get("runtimes") or {}).get("recommendation") or data["target"]
    for c in cands:
        if c.get("fidelity") is None:
            continue
        fam = c["family"].split("+")[0]
        color = _FAMILY_COLORS.get(fam, "#ff7f0e")
        other = c.get("runtime") not in (None, own)
        if c["measured"]:
            ax.scatter(c["measured"]["median_ms"], c["fidelity"], color=color, s=36,
                       marker="^" if other else "s" if "+" in c["family"] else "o", zorder=3)
        elif c.get("predicted_ms") and c["status"] == "ok":
            ax.scatter(c["predicted_ms"], c["fidelity"], facecolors="none", edgecolors=color,
                       s=30, zorder=2)
    pts = sorted((c["measured"]["median_ms"], c["fidelity"]) for c in cands
                 if c["id"] in front and c["measured"])
    if pts:
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="#d62728", lw=1.2,
                label="Pareto front")
    rec = data.get("recommendation")
    if rec:
        ax.scatter(rec["median_ms"], rec["fidelity"], marker="*", s=260, color="#d62728",
                   zorder=4, label=f"recommended: {rec['name'][:40]}")
    if data["config"].get("budget_ms"):
        ax.axvline(data["config"]["budget_ms"], color="gray", ls="--", lw=1, label="budget")
    ax.axhline(data["config"]["min_fidelity"], color="gray", ls=":", lw=1, label="min fidelity")
    for fam, color in _FAMILY_COLORS.items():
        ax.scatter([], [], color=color, label=fam, s=20)
    if any(c.get("runtime") not in (None, own) for c in cands):
        ax.scatter([], [], color="#777777", marker="^", s=20, label="other runtime")
    ax.set_xlabel("median latency, ms (hollow: predicted only)")
    ax.set_ylabel("fidelity")
    ax.set_title("latency vs fidelity")
    ax.grid(alpha=0.3)
    # beside the axes, never over the points
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


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

    head, pairs = _candidate_rows(data)
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
