"""The search's Pareto plot: latency vs fidelity for every candidate measured (hollow where only
predicted), the front, the recommendation, the budget and the fidelity floor."""

from __future__ import annotations

import io
from typing import Any, Mapping

_FAMILY_COLORS = {"baseline": "#222222", "int8": "#1f77b4", "prune": "#2ca02c",
                  "lowrank": "#9467bd", "tucker": "#8c564b", "compact": "#e377c2"}



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
