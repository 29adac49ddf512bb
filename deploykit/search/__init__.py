"""Latency-guided compression search: candidates, layer table, NetAdapt, Pareto front, engine."""

import sys as _sys

from .. import _CallableModule

_sys.modules[__name__].__class__ = _CallableModule  # deploykit.search(...) is deploykit.api.search(...)
