"""Replacing submodules of an nn.Module in place, by dotted name."""

from __future__ import annotations


def replace(model, name: str, new) -> None:
    """Put `new` where `name` was, in the old module's train/eval mode (BatchNorm cares)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new.train(getattr(parent, child).training)
    setattr(parent, child, new)


def leaves(model, kind) -> list:
    """(name, module) of every submodule of type `kind`, listed before any replacement."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]
