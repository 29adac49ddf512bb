"""Torch-side compression: pruning, low-rank, compact filters, distillation on nn.Module."""

import sys as _sys

from .._callable import CallableModule

_sys.modules[__name__].__class__ = CallableModule  # deploykit.compress(...) is deploykit.api.compress(...)

