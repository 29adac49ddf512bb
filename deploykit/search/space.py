"""This search's candidate space, in the order it is built: the model as given, the expert recipes
of every runtime searched (built whatever the time limit, then measured whole), the recovered
prunes of a torch source (their training takes the longest), then the rest of the space."""

from __future__ import annotations

from typing import Callable, Sequence

from ..backends.base import Target
from .candidates import Candidate, available_steps, int8_finish, model_candidates, model_traits
from .result import SearchConfig

Experts = dict[str, dict[tuple, str]]  # {model id: {target variant: why an expert picks it}}


def experts_of(cfg: SearchConfig, source_model, models: list[Candidate],
               runtimes: Sequence[str], target_of: Callable[[tuple], Target]) -> Experts:
    """The expert recipes of every runtime searched, added to `models` when the space lacks them
    (not when --families leaves out int8)."""
    from .experts import expert_steps

    if not cfg.experts or (cfg.families and "int8" not in cfg.families):
        return {}
    have = available_steps(["quantize-static", "quantize-dynamic", "nncf-int8",
                            "nncf-weights"])
    out: Experts = {}
    known = {c.model_id for c in models}
    for opts in [(), *((("target", n),) for n in runtimes)]:
        backend = target_of(opts).config.get("backend", "")
        for step, why in expert_steps(source_model, backend, have):
            cand = Candidate("int8", (step,))
            if cand.model_id not in known:
                models.append(cand)
                known.add(cand.model_id)
            out.setdefault(cand.model_id, {})[opts] = why
    return out


def recover_candidates(cfg: SearchConfig, torch_source, source_model,
                       notes: list[str]) -> list[Candidate]:
    """Torch-side prunes recovered by distillation (and each made int8), when the source is
    a torch module and --recover-budget allows; a note says why not otherwise."""
    from .recover import RATIOS, STEP, UNAVAILABLE_ONNX

    budget = cfg.recover_budget_s
    if budget <= 0 or (cfg.families and "prune" not in cfg.families):
        return []
    if torch_source is None:
        notes.append(UNAVAILABLE_ONNX)
        return []
    traits = model_traits(source_model)
    finish = int8_finish(traits, available_steps(["quantize-static", "quantize-dynamic"])) \
        if not cfg.families or "int8" in cfg.families else []
    from ..compress.channel_groups import has_residual_streams

    # residual streams (an Add joining convs) pruned too, coupled across their blocks: a
    # deeper cut than the blocks' inner convs alone, tried where the module has such streams
    streams = (False, True) if has_residual_streams(torch_source.module) else (False,)
    out = []
    for r in RATIOS:
        for residual in streams:
            step = (STEP, (("budget_s", budget), ("ratio", r))
                    + ((("residual", True),) if residual else ()))
            out.append(Candidate("prune+kd", (step,)))
            out += [Candidate("prune+kd+int8", (step, q)) for q in finish]
    return out


def search_space(cfg: SearchConfig, source_model, torch_source, target: Target,
                 target_of: Callable[[tuple], Target], notes: list[str]
                 ) -> tuple[list[Candidate], list[tuple], Experts]:
    """(model candidates in build order, the baseline first; target variants, the default
    first; the experts' picks)."""
    from .candidates import option_variants

    models = model_candidates(source_model, cfg.min_fidelity, cfg.families)
    runtimes = tuple(cfg.runtimes)
    variants = option_variants(target, runtimes) if cfg.target_options else \
        [(), *((("target", n),) for n in runtimes)]
    experts = experts_of(cfg, source_model, models, runtimes, target_of)
    models = [models[0], *(c for c in models[1:] if c.model_id in experts),
              *recover_candidates(cfg, torch_source, source_model, notes),
              *(c for c in models[1:] if c.model_id not in experts)]
    return models, variants, experts
