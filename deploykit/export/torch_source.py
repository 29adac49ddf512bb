"""The torch side of an export: a user's factory file and checkpoint loaded, example inputs made,
the module run for the reference outputs."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import InputError, first_line


def one_line(e: BaseException) -> str:
    """`Type: first line of the message` (torch puts the message first, frames after it)."""
    return f"{type(e).__name__}: {first_line(e, limit=10_000, backtrace=False)}"


def load_factory(source: str) -> tuple[Callable, Callable | None, Path]:
    path_s, sep, name = source.rpartition(":")
    if not sep or not path_s.endswith(".py") or not name.isidentifier():
        raise InputError(f"bad model source {source!r}: expected path/to/file.py:factory or an "
                         ".onnx file")
    path = Path(path_s)
    if not path.is_file():
        raise InputError(f"factory file not found: {path}")
    mod_name = "deploykit_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # sibling imports of the user's file
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of user code is an input problem
        raise InputError(f"cannot import {path}: {one_line(e)}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"{path} has no callable '{name}'")
    example = getattr(module, "example_inputs", None)
    return factory, example if callable(example) else None, path


def load_weights(model, weights: Path, trust_pickle: bool) -> None:
    """Checkpoints load with weights_only=True; a pickle needs the user's explicit trust."""
    import pickle

    import torch

    if not weights.is_file():
        raise InputError(f"checkpoint not found: {weights}")
    try:
        obj = torch.load(weights, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError:
        raise InputError(f"checkpoint {weights} is not plain tensors (it needs pickle to load); "
                         "pass --trust-pickle only if you trust where it came from") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise InputError(f"cannot read checkpoint {weights}: {one_line(e)}") from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"checkpoint {weights} holds no state dict of tensors")
    try:
        model.load_state_dict(obj, strict=True)
    except RuntimeError as e:
        raise InputError(f"checkpoint {weights} does not fit the model: "
                         f"{' '.join(str(e).split())[:300]}") from None


def _forward_params(model) -> list:
    return [p for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _input_names(model, n: int) -> list[str]:
    names = [p.name for p in _forward_params(model)[:n]]
    return names + [f"input_{i}" for i in range(len(names), n)]


def make_example_inputs(model, example: Callable | None, shapes: Mapping[str, Sequence[int]],
                    seed: int) -> tuple[tuple, list[str]]:
    import torch

    if example is not None:
        try:
            with torch.random.fork_rng(devices=[]):
                args = example()
        except Exception as e:  # noqa: BLE001
            raise InputError(f"example_inputs() raised {one_line(e)}") from None
        args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
        if not all(isinstance(a, torch.Tensor) for a in args):
            raise InputError("example_inputs() must return a tensor or a tuple of tensors")
        names = _input_names(model, len(args))
    elif shapes:
        params = _forward_params(model)
        names = [p.name for p in params if p.name in shapes or p.default is p.empty]
        missing = [n for n in names if n not in shapes]
        if missing:
            raise InputError(f"no --shape for input(s) {missing} (forward takes {names})")
        args = ()
    else:
        raise InputError("the factory's file has no example_inputs(); give input shapes with "
                         "--shape NAME=D0,D1,...")
    unknown = set(shapes) - set(names)
    if unknown:
        raise InputError(f"--shape names unknown input(s) {sorted(unknown)}; inputs are {names}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, name in enumerate(names):
        if name in shapes:  # same dtype (and integer range) as the example, new shape
            like = args[i] if args else torch.empty(0)
            out.append(random_like(like, tuple(shapes[name]), gen))
        else:
            out.append(args[i])
    return tuple(out), names


def random_like(t, shape: tuple[int, ...], gen):
    """Seeded values of `t`'s dtype; integers stay within t's range (token ids, indices)."""
    import torch

    if t.dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(t.dtype)
    if t.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    lo, hi = (int(t.min()), int(t.max()) + 1) if t.numel() else (0, 2)
    return torch.randint(lo, max(hi, lo + 1), shape, generator=gen, dtype=t.dtype)


def _flat_outputs(out) -> list[np.ndarray]:
    import torch
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(out)
    return [leaf.detach().cpu().numpy() for leaf in leaves if isinstance(leaf, torch.Tensor)]


def run_torch(model, args) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return _flat_outputs(model(*args))


def state_dict_sha256(module) -> str:
    """sha256 of a module's parameters and buffers (names and bytes): the same weights give the
    same id, whatever object holds them."""
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
