"""Torch-side compression: pruning, low-rank, compact filters, distillation on nn.Module."""

import sys as _sys

from .. import _CallableModule

_sys.modules[__name__].__class__ = _CallableModule  # deploykit.compress(...) is deploykit.api.compress(...)

