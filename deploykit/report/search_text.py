"""The search result (search.json) as words and table rows: the summary lines the terminal prints,
and the candidates, per-op, recovery and environment tables both the HTML page and the Markdown
report show."""

from __future__ import annotations

import json
from typing import Any, Mapping


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
    head, pairs = candidate_rows(data)
    return head, [row for _, row in pairs]


def candidate_rows(data: Mapping[str, Any]) -> tuple[list[str], list[tuple[dict, list[str]]]]:
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
        if rec.get("boards"):  # the confirmation spread over a pool: each board's own
            lines.append("  confirmed on every board, both models on each: " + "; ".join(
                f"{b['server']} {_x(b['speedup'])} over {b['rounds']} rounds"
                + (" DISAGREES" if b["disagrees"] else "") for b in rec["boards"]))
        if rec.get("boards_note"):
            lines.append("  " + rec["boards_note"])
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
    dev = cost.get("devices")
    if dev:  # a device pool (backends/tvm/pool.py): which boards measured, which dropped out
        lost = f"; dropped out: {', '.join(dev['lost'])}" if dev["lost"] else ""
        lines.append(f"Measured on {len(dev['servers'])} board(s) of key '{dev['key']}' via "
                     f"tracker {dev['tracker']} ({', '.join(dev['servers'])}), "
                     f"{cost.get('measuring_s', 0):.0f} s of measuring{lost}"
                     + ("" if not cost.get("phases_s") else " (" + ", ".join(
                         f"{k} {v:.1f} s" for k, v in cost["phases_s"].items()) + ")"))
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


def _x(v) -> str:
    return "n/a" if v is None else f"{v:.2f}x"
