"""BENCHMARKS.md sections of tools/bench_recover.py: the search with recovery vs int8 alone, on
the MNIST CNN (accuracy floor) and on the ResNet-style CNN (cosine floor). Rendering only, from
the results.json entry."""

from __future__ import annotations


def recovered_pick(r: dict) -> bool:
    """Whether the search-with-recovery's pick is a recovered cut (its recipe has the torch-side
    prune step): the target compares what recovery made with int8 alone, so a pick that is an
    int8 recipe both searches had is no evidence for it, whatever its measured ratio."""
    from deploykit.search.recover import STEP

    pick = next((x for x in r["rows"] if x["name"] == "recovery pick"), None)
    return pick is not None and STEP in (pick.get("recipe") or "")


def recover_markdown(r: dict, header_env: dict | None = None) -> list[str]:
    """The section of one bench_recover.py run (`model` says which)."""
    from bench_report import _provenance_line

    resnet = r.get("model") == "resnet-mnist"
    tg = r["target"]
    prov = _provenance_line(r.get("provenance", {}), header_env)
    taken = (f"time limit {r['time_limit_s']:g} s ({r['search_s']:.0f} s taken"
             + ("; resumed: the candidates an earlier run built and trained in its OUTDIR/.work "
                "were reused" if r.get("resumed") else "") + ")")
    recovery = (f"recovery {r['recover_budget_s']:g} s per pruned candidate and "
                f"{r['recover_final_s']:g} s more for the final pick (continuing from its short "
                "recovery's weights)")
    int8 = ("the int8-only pick is the recommendation of the same search restricted to int8 (no "
            "recovery): the fastest of the int8 candidates and the original model (with thread "
            "options) at the floor, so when no int8 candidate beats the original it is the "
            "original. Latency: ORT CPU, batch 1, the three rows interleaved in one run.")
    if resnet:
        lines = ["## ResNet-style CNN with BatchNorm: the search with recovery vs int8 alone, at "
                 f"cosine >= {tg['min_cosine']}", "",
                 prov + f" tinyresnet's residual blocks (BatchNorm, widths "
                 f"{'-'.join(map(str, r.get('widths') or (16, 32, 64, 128)))}) trained here "
                 f"({r['teacher_epochs']} epochs on {r['n_train']:,} real digits, "
                 f"{r['base_accuracy']:.1%} on {r['n_test']:,} held-out ones). `deploykit search` "
                 f"with `--eval` = the worst per-digit output cosine vs the original over "
                 f"{r['cosine_digits']} held-out digits (never distilled on), floor "
                 f"{r['floor']:g}, {r['calibration_digits']} unlabeled training digits as "
                 f"calibration and distillation data, {recovery}, {taken}; {int8}", "",
                 "| model | recipe | cosine worst / mean (held-out) | accuracy "
                 "| median ms (95% CI) | speedup vs fp32 (95% CI) |", "|---|---|---|---|---|---|"]
    else:
        classic = r.get("model") == "mnist-classic"
        what = ("pytorch/examples' MNIST CNN (mnist/main.py `Net`: conv 32 and 64 3x3, max-pool, "
                "Linear 9216->128->10; 1.2 M parameters, ~12 M multiply-adds)" if classic else
                "The bundled MNIST CNN (conv 16 and 32 stride 2, one Linear; ~15 microseconds a "
                "call, so ORT's per-call overhead bounds what pruning can save: this row "
                "measures call overhead more than pruning, the pytorch/examples CNN's row below "
                "measures pruning)")
        lines = [f"## MNIST CNN{' (pytorch/examples)' if classic else ''}: the search with "
                 "recovery vs int8 alone, at a 0.5-point floor", "",
                 prov + f" {what} trained here ({r['teacher_epochs']} epochs on "
                 f"{r['n_train']:,} real digits, {r['base_accuracy']:.1%} on {r['n_test']:,} "
                 f"held-out ones). `deploykit search` with `--eval` = held-out accuracy, floor "
                 f"{r['floor']:.4f} of it (-{tg['max_drop_points']} point), "
                 f"{r['calibration_digits']} unlabeled training digits as calibration and "
                 f"distillation data, {recovery}, {taken}; {int8}", "",
                 "| model | recipe | accuracy | drop (points) | median ms (95% CI) "
                 "| speedup vs fp32 (95% CI) |", "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        opts = ",".join(f"{k}={v}" for k, v in x["options"].items())
        recipe = (x["recipe"] or ("the original model" if x["name"] != "fp32" else "–")) \
            + (f" @ {opts}" if opts else "")
        quality = (f"{x['cosine_min']:.4f} / {x['cosine_mean']:.4f} | {x['accuracy']:.1%}"
                   if resnet else f"{x['accuracy']:.1%} | {x['drop_points']:+.1f}")
        lines.append(f"| {x['name']} | {recipe.replace('|', '&#124;')} | {quality} | "
                     f"{x['median_ms']:.4f} ({x['ci95_ms'][0]:.4f}–"
                     f"{x['ci95_ms'][1]:.4f}) | {x['speedup']:.2f}x ({x['speedup_ci95'][0]:.2f}–"
                     f"{x['speedup_ci95'][1]:.2f}) |")
    if r.get("recovered"):
        what = "worst held-out cosine" if resnet else "accuracy relative to fp32"
        hinted = any(c.get("hints") or c.get("fidelity_bn") is not None
                     for c in r["recovered"])  # runs of the feature-hint recovery
        how = ("distillation on the search's verification inputs, and after re-estimating the "
               "pruned model's BatchNorm statistics where it has them; distillation matches the "
               "outputs and the feature maps at the block boundaries" if hinted else
               "distillation on the search's verification inputs")
        lines += ["", f"Recovered candidates (fidelity = {what}; cosine before/after {how}; a "
                  "final one starts from its short recovery's weights and cosine):", "",
                  "| candidate | status | fidelity | cosine before | cosine after "
                  "| seconds | steps |", "|---|---|---|---|---|---|---|"]
        for c in r["recovered"]:
            fid = "–" if c["fidelity"] is None else f"{c['fidelity']:.4f}"
            after = "–" if c["fidelity_after"] is None else f"{c['fidelity_after']:.4f}"
            before = f"{c['fidelity_before']:.4f}"
            if c.get("fidelity_bn") is not None:
                before += f" (BN re-estimated {c['fidelity_bn']:.4f})"
            if c.get("start_fidelity") is not None:
                before += f" (start {c['start_fidelity']:.4f})"
            steps = f"{c['steps'] or 0}"
            if c.get("start_steps"):
                steps += f" (+{c['start_steps']} before)"
            lines.append(f"| {c['name'].replace('|', '&#124;')} | {c['status']} | {fid} | "
                         f"{before} | {after} | {c['seconds'] or 0:.0f} | {steps} |")
    s, lo, hi = r["recovery_vs_int8"]
    lines += ["", "Share of timing samples taken under foreign load: "
              + ", ".join(f"{x['contaminated']:.0%}" for x in r["rows"]) + "."]
    floor = (f"at worst held-out cosine >= {tg['min_cosine']}" if resnet
             else f"at <= {tg['max_drop_points']} point drop")
    pruned = recovered_pick(r)
    met = r["met"] and pruned
    lines += ["", f"Target (recovery pick >= {tg['speedup_vs_int8']}x faster than the int8-only "
              f"pick {floor}): **{'met' if met else 'NOT met'}**"
              f" — {s:.2f}x ({lo:.2f}–{hi:.2f}), interleaved."
              + ("" if pruned else " The recovery pick is no recovered (pruned) candidate: no cut "
                 "met the floor, so recovery made nothing to compare, and the ratio measures the "
                 "two searches' choice of thread options and the load on the machine, not "
                 "recovery.")]
    if r.get("diagnostic_vs_int8"):
        d, dlo, dhi = r["diagnostic_vs_int8"]
        lines += ["", f"Diagnostic, not the target's figure: the deepest recovered prune that "
                  f"passed the floor, on the int8-only pick's options, is {d:.2f}x ({dlo:.2f}–"
                  f"{dhi:.2f}) the int8-only pick's speed in the same interleaved run (what "
                  "recovery made, whether or not the search's own measurements picked it)."]
    lines.append("")
    return lines
