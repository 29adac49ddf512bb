"""What `deploykit check` tells CI: a verdict dict (the command's --json result) rendered as a
Markdown PR comment, JUnit XML (one test case per gate: latency, memory, cold start; a regression
is a <failure>, a gate without data is <skipped>), and the label/value rows the terminal table
shows too."""

from __future__ import annotations

from pathlib import Path


def fmt_ms(x) -> str:
    """A per-op time, or a dash where one side lacks the node."""
    return "—" if x is None else f"{x:.3f}"


def rows(r: dict) -> list[tuple[str, str]]:
    """(label, value) of the verdict: what every rendering shows."""
    lo, hi = r["ratio_ci"]
    out = [("verdict", r["summary"]),
           ("median old -> new", f"{r['old_median_ms']:.3f} -> {r['new_median_ms']:.3f} ms"),
           ("ratio new/old", f"{r['ratio']:.4f}  ({r['conf']:.0%} CI {lo:.4f} – {hi:.4f})"),
           ("mode", f"{r['mode']} ({r['n_units']} rounds of fresh sessions)"),
           ("tests", f"rank test on rounds p={r['p_units']:.2g}; "
                     f"Mann-Whitney on raw samples p={r['p_raw']:.2g}"),
           ("threshold", f"{r['threshold']:.1%}"),
           ("memory", r["memory"]["summary"]),
           ("cold start", r["cold_start"]["summary"]),
           ("wall time", f"{r['wall_s']:.1f} s")]
    share = r["contaminated_share"]
    out.append(("measurement", f"{r['state']} (rounds with foreign load: old "
                               f"{share['old']:.0%}, new {share['new']:.0%} of samples)"
                + ("" if r["state"] == "clean" else f": {r['reason']}")))
    if r["note"]:
        out.append(("note", r["note"]))
    if r.get("boards"):  # spread over a device pool: each board interleaved old and new
        out.append(("boards", "; ".join(
            f"{b['server']}: " + ("n/a" if b["ratio"] is None else f"{b['ratio']:.4f}")
            + f" over {b['rounds']} rounds" + (" DISAGREES" if b["disagrees"] else "")
            for b in r["boards"])))
    if r.get("boards_note"):
        out.append(("boards disagree", r["boards_note"]))
    if r["env_differences"]:
        out.append(("environment changed", "; ".join(r["env_differences"])))
    return out


def markdown(r: dict) -> str:
    """A PR-comment summary: verdict, the numbers, and the nodes that got slower."""
    head = {"regression": "❌ latency regression", "improvement": "🚀 latency improvement",
            "within-threshold": "✅ within threshold", "no-change": "✅ no significant change"}
    title = head[r["status"]]
    extra = [k for k in ("memory", "cold_start") if r[k]["failed"]]
    if extra:
        title = "❌ " + " and ".join(k.replace("_", "-") + " regression" for k in extra) + \
            ("" if r["status"] != "regression" else " and latency regression")
    lines = [f"### deploykit check: {title}", "",
             f"`{r['model']}` on `{r['target']}` against `{r['baseline']}`", "",
             "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows(r)]
    if r["per_op_diff"]:
        lines += ["", "<details><summary>per-operator diff (ms per inference, largest increase "
                      "first)</summary>", "", "| node | op | old | new | Δ |",
                  "|---|---|---:|---:|---:|"]
        lines += [f"| `{o['name']}` | {o['op_type']} | {fmt_ms(o['old_ms'])} | "
                  f"{fmt_ms(o['new_ms'])} | {o['delta_ms']:+.3f} |" for o in r["per_op_diff"]]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def junit_xml(r: dict) -> str:
    """One test case per check; a regression is a <failure> (what CI systems display)."""
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites")
    res = [r["memory"], r["cold_start"]]
    suite = ET.SubElement(suites, "testsuite", name="deploykit check", tests="3",
                          failures=str(int(r["latency_failed"]) + sum(x["failed"] for x in res)),
                          errors="0", skipped=str(sum(x["status"] == "no-data" for x in res)),
                          time=f"{r['wall_s']:.3f}")
    case = ET.SubElement(suite, "testcase", classname=f"deploykit.latency.{r['target']}",
                         name=Path(r["model"]).name, time=f"{r['wall_s']:.3f}")
    details = "\n".join(f"{k}: {v}" for k, v in rows(r))
    ops = "\n".join(f"{o['name']} ({o['op_type']}): {fmt_ms(o['old_ms'])} -> "
                    f"{fmt_ms(o['new_ms'])} ms ({o['delta_ms']:+.3f})" for o in r["per_op_diff"])
    if r["latency_failed"]:
        ET.SubElement(case, "failure", message=r["summary"], type="LatencyRegression").text = \
            details + "\n\nper-op diff:\n" + ops
    ET.SubElement(case, "system-out").text = details
    for x, kind in zip(res, ("memory", "cold_start")):
        c = ET.SubElement(suite, "testcase", classname=f"deploykit.{kind}.{r['target']}",
                          name=Path(r["model"]).name, time="0")
        if x["failed"]:
            ET.SubElement(c, "failure", message=x["summary"],
                          type="MemoryRegression" if kind == "memory" else "ColdStartRegression"
                          ).text = x["detail"]
        elif x["status"] == "no-data":  # not checked is not passed
            ET.SubElement(c, "skipped", message=x["summary"])
        ET.SubElement(c, "system-out").text = x["summary"]
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
