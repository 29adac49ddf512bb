"""Latency-guided compression search: candidates, layer table, NetAdapt, Pareto front, engine."""

import sys as _sys

from .._callable import CallableModule

_sys.modules[__name__].__class__ = CallableModule  # deploykit.search(...) is deploykit.api.search(...)
