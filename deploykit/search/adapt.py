"""The NetAdapt loop (search/netadapt.py) wired into a running search: each proposal is built and
fidelity-checked like any candidate and estimated on the layer table; the deepest accepted cuts
are then made int8. A failure inside the loop ends only the loop, with a note."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..errors import first_line
from .candidates import Candidate
from .progress import Bar
from .result import Row

if TYPE_CHECKING:
    from .engine import Search

NETADAPT_SHARE = 0.8  # per-layer (NetAdapt) moves may run until this share of the time limit


def netadapt_rows(search: "Search", base: Row, sha_seen: dict[str, Row], bar: Bar
                  ) -> tuple[list[Row], list[Row], dict[str, Any] | None]:
    """(every row the loop built, the deepest ones it kept, the loop's log): its proposals, and
    the int8 composition of the last two accepted states."""
    out: list[Row] = []
    log: dict[str, Any] = {}
    try:
        kept = _loop(search, base, sha_seen, bar, out, log)
    except Exception as e:  # the rows built so far stay; the search goes on without it
        search.notes.append(f"NetAdapt per-layer loop stopped: {type(e).__name__}: "
                            f"{first_line(e)}")
        kept = []
    return out, kept, log or None


def _loop(search: "Search", base: Row, sha_seen: dict[str, Row], bar: Bar, out: list[Row],
          log: dict[str, Any]) -> list[Row]:
    import onnx

    from ..onnxio import load_onnx
    from .candidates import available_steps, int8_finish, model_traits
    from .netadapt import NetAdaptConfig, layer_costs, layers_of, netadapt, state_steps

    cfg, estimator = search.cfg, search.estimator
    source = load_onnx(search.source.path)
    traits = model_traits(source)
    kinds = {k for k in ("prune", "lowrank") if not cfg.families or k in cfg.families}
    # transformers' structured pruning (feed-forward neurons, attention heads) is "prune" too
    kinds |= {"ffn", "heads"} if "prune" in kinds else set()
    have = available_steps(["prune-channels", "prune-ffn", "prune-heads", "lowrank",
                            "quantize-static", "quantize-dynamic"])
    kinds &= {k for k, st in (("prune", "prune-channels"), ("ffn", "prune-ffn"),
                              ("heads", "prune-heads"), ("lowrank", "lowrank")) if st in have}
    if traits["quantized"] or not kinds:
        return []
    layers = layers_of(source, kinds)
    if not layers:
        return []
    limit = (1 - NETADAPT_SHARE) * cfg.time_limit_s
    estimates: dict[str, Any] = {}  # model path -> its layer-table estimate

    def add(cand: Candidate) -> Row:
        row = Row(cand)
        search.build(row)
        if row.status == "ok" and row.sha256 in sha_seen:
            seen = sha_seen[row.sha256]
            row.status, row.reason = "duplicate", f"same model as {seen.cand.name}"
            row.table_ms = seen.table_ms  # the loop may still step past it
        elif row.status == "ok":
            sha_seen[row.sha256] = row
            row.table_ms = estimator.estimate(row, estimates)
        out.append(row)
        bar.grow(row)
        bar.show_best(out, cfg.budget_ms)
        return row

    def propose(state: dict) -> Row:
        family = "+".join(sorted({f"{k}/layer" for k, _ in state}))
        return add(Candidate(family, state_steps(state)))

    def costs(row: Row | None) -> dict[str, float]:  # a kept row was estimated when built
        m = source if row is None else onnx.load(row.path)
        est = None if row is None else estimates.get(row.path)
        return layer_costs(m, est or estimator.tables[()].estimate(m, search.feeds), layers)

    def done(row: Row) -> bool:  # the budget, on the baseline-calibrated table
        return cfg.budget_ms is not None and base.median is not None and \
            row.table_ms * base.median / base.table_ms <= cfg.budget_ms

    accepted, iterations = netadapt(base.table_ms, layers, NetAdaptConfig(), propose, costs, done,
                                    lambda: search.within_time(limit, "NetAdapt"))
    log.update({"layers": len(layers), "proposals": len(out),
                "iterations": [asdict(it) for it in iterations]})
    finish = int8_finish(traits, have) if not cfg.families or "int8" in cfg.families else []
    kept = accepted[-2:]  # the two deepest cuts, and those made int8
    for row in accepted[-2:] if finish else []:
        if not search.within_time(limit, "NetAdapt int8"):
            break
        kept.append(add(Candidate(row.cand.family + "+int8", row.cand.steps + tuple(finish))))
    return kept
