"""Terminal tables (rich) for latency reports and comparisons."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..core import LatencyReport
from ..measure.timing import Comparison, required_samples_note


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 100 else f"{x:.1f}"


def print_headline(v, console: Console) -> None:
    """The verdict on the measurement, above the numbers, when it is not clean."""
    if not v.clean:
        console.print(f"[bold red]{v.headline()}[/bold red]")


def print_report(r: LatencyReport, top: int = 10, console: Console | None = None) -> None:
    console = console or Console()
    v = r.validity
    print_headline(v, console)
    lo, hi = r.ci95_ms
    t = Table(title=f"{r.model_path} on {r.target}", show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value")
    where = "" if v.clean else (", describes the loaded conditions" if v.state == "contaminated"
                                else ", describes unstable conditions")
    t.add_row("median", f"{_ms(r.median_ms)} ms  (95% CI {_ms(lo)} – {_ms(hi)}, "
                        f"±{r.rel_ci_halfwidth:.2%}{where})")
    drift = "" if v.drift != v.drift else f"; drift {v.drift:+.1%}, block spread {v.spread:.1%}"
    style = "green" if v.clean else "bold red"
    t.add_row("measurement", f"[{style}]{v.state}[/{style}]: {v.reason}{drift}")
    t.add_row("p90 / p99", f"{_ms(r.p90_ms)} / {_ms(r.p99_ms)} ms")
    t.add_row("mean ± std (CV)", f"{_ms(r.mean_ms)} ± {_ms(r.std_ms)} ms ({r.cv:.1%})")
    t.add_row("throughput", f"{r.throughput_per_s:.1f} /s (batch {r.batch})")
    t.add_row("samples", required_samples_note(r))
    t.add_row("min / p5 / p95 / max", f"{_ms(r.percentile_ms(0))} / {_ms(r.percentile_ms(5))} / "
                                      f"{_ms(r.percentile_ms(95))} / {_ms(r.percentile_ms(100))} ms")
    t.add_row("session creation / first inference",
              f"{_ms(r.session_create_ms)} / {_ms(r.first_inference_ms)} ms "
              f"(cold start {_ms(r.cold_start_ms)} ms; then {r.warmup_samples} warm-up runs"
              + (f" in {_ms(r.warmup_ms)} ms)" if r.warmup_ms == r.warmup_ms else ")"))
    for row in memory_rows(r):
        t.add_row(*row)
    st = r.stability
    if st:
        lo, hi = st["trend_ci"]
        style = "bold red" if st["flagged"] else ""
        text = (f"{st['note']}; trend {st['trend_per_min']:+.2%}/min (95% CI {lo:+.2%} – "
                f"{hi:+.2%}) over {st['duration_s']:.0f} s; IQR {_ms(st['iqr_ms'])} ms, "
                f"p99/p50 {st['p99_over_p50']:.2f}")
        t.add_row("stability", f"[{style}]{text}[/{style}]" if style else text)
    mean_load = (sum(b.foreign_cpu * b.n for b in r.blocks) / max(1, sum(b.n for b in r.blocks)))
    style = "red" if r.contaminated_fraction else ""
    t.add_row("foreign CPU load", f"[{style}]{mean_load:.0%} of cores on average; "
                                  f"{r.contaminated_fraction:.0%} of samples in contaminated blocks"
                                  f"[/{style}]" if style else
              f"{mean_load:.0%} of cores on average; no contaminated blocks")
    if r.flops:
        t.add_row("work", f"{r.flops / 1e9:.3f} GFLOP -> {r.flops / r.median_ms / 1e6:.1f} GFLOP/s")
    if r.roofline_efficiency is not None:
        t.add_row("roofline", f"{_ms(r.roofline_ms)} ms bound -> efficiency "
                              f"{r.roofline_efficiency:.0%}")
    t.add_row("machine", f"{r.env.get('cpu_model')}, {r.env.get('threads')} threads")
    for label in r.labels:
        t.add_row("note", f"[yellow]{label}[/yellow]")
    console.print(t)
    if r.per_op:
        ops = Table(title=f"per-operator breakdown (top {top} nodes of {len(r.per_op)})")
        # the model's own names next to the runtime's when they differ (fused / renamed nodes)
        named = any(o.layer and o.layer != o.name for o in r.per_op[:top])
        modules = any(o.module for o in r.per_op[:top])
        cols = (["node"] + (["model node"] if named else []) + (["module"] if modules else [])
                + ["op type", "ms / inference", "share"])
        for c in cols:
            ops.add_column(c, justify="right" if c in ("ms / inference", "share") else "left")
        for o in r.per_op[:top]:
            row = [o.name[-60:]] + ([o.layer[-50:]] if named else []) + \
                  ([o.module[-40:]] if modules else [])
            ops.add_row(*row, o.op_type, f"{o.total_ms:.3f}", f"{o.share:.1%}")
        console.print(ops)


def memory_rows(r: LatencyReport) -> list[tuple[str, str]]:
    """Peak RSS per phase: delta over the process before loading, and absolute."""
    from ..measure.memory import fmt_bytes

    m = r.memory
    if not m:
        return []
    rows = []
    for phase, label in (("load", "memory: load"), ("first", "memory: first inference"),
                         ("steady", "memory: steady")):
        if f"{phase}_peak_bytes" in m:
            rows.append((label, f"peak +{fmt_bytes(m[f'{phase}_delta_bytes'])} over the process "
                                f"before loading ({fmt_bytes(m[f'{phase}_peak_bytes'])} RSS)"))
    rt = m.get("runtime")
    if isinstance(rt, dict) and "arena_held_bytes" in rt:
        rows.append(("memory: runtime's own", f"ORT arena holds {fmt_bytes(rt['arena_held_bytes'])}"
                     f", peak in use {fmt_bytes(rt.get('arena_in_use_peak_bytes'))} "
                     "(profiling session)"))
    dev = m.get("device")
    if isinstance(dev, dict):
        if "peak_bytes" in dev:
            over = (f" (+{fmt_bytes(dev['peak_delta_bytes'])} over the session before loading)"
                    if "peak_delta_bytes" in dev else "")
            rows.append(("memory: device", f"peak RSS {fmt_bytes(dev['peak_bytes'])}{over}"
                         + (", EMULATED: qemu's own memory included" if dev.get("emulated")
                            else "")))
        else:
            rows.append(("memory: device", str(dev.get("error", "not measured"))))
    if "weight_bytes" in m or "file_bytes" in m:
        rows.append(("model bytes", f"weights {fmt_bytes(m.get('weight_bytes'))}, file "
                                    f"{fmt_bytes(m.get('file_bytes'))}"))
    return rows


def print_comparison(c: Comparison, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title="interleaved comparison (ratio = median / median of the first row)")
    for col in ("model @ target", "median ms", "95% CI", "ratio", "ratio 95% CI", "samples",
                "contaminated", "state", "notes"):
        t.add_column(col)
    for name, r in zip(c.names, c.reports):
        if not r.validity.clean:
            console.print(f"[bold red]{name}: {r.validity.headline()}[/bold red]")
    for i, (name, r) in enumerate(zip(c.names, c.reports)):
        ratio, lo, hi = c.ratio(i, 0)
        clo, chi = r.ci95_ms
        state = r.validity.state
        t.add_row(name, _ms(r.median_ms), f"{_ms(clo)} – {_ms(chi)}", f"{ratio:.3f}",
                  f"{lo:.3f} – {hi:.3f}", str(len(r.samples_ms)), f"{r.contaminated_fraction:.0%}",
                  state if state == "clean" else f"[bold red]{state}[/bold red]",
                  "[yellow]" + "; ".join(r.labels) + "[/yellow]" if r.labels else "")
    console.print(t)
