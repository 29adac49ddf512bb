"""The root lookup of the union-finds over channel sets (prune-channels' channel graph,
prune-hidden's stream, the torch-side channel groups): one parent list, path halving."""

from __future__ import annotations


def find_root(parent: list[int], s: int) -> int:
    """The root of `s` in `parent`, halving the path on the way."""
    while parent[s] != s:
        parent[s] = parent[parent[s]]
        s = parent[s]
    return s
