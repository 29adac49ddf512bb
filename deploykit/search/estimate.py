"""Predicting a candidate before it is measured whole: one layer table (search/layer_table.py) per
target variant, since a unit's latency depends on threads, graph level and runtime. A variant
whose runtime cannot time a unit alone borrows the default variant's table."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import first_line
from .layer_table import LayerTable
from .measuring import Measurer
from .result import Row


class Estimator:
    """Layer-table estimates of a search's candidates; what it cannot predict goes to `notes`."""

    def __init__(self, feeds: Mapping[str, np.ndarray], notes: list[str]):
        self.feeds, self.notes = feeds, notes
        self.tables: dict[tuple, LayerTable] = {}
        self.borrowed: set[tuple] = set()  # variants predicted from the default table

    def make_tables(self, variants: Sequence[tuple], measurer: Measurer, folder: Path) -> None:
        many = measurer.pool is not None  # spread a candidate's new units over the boards
        self.tables = {v: LayerTable(partial(measurer.time_unit, measurer.target_of(v)),
                                     partial(measurer.lookup_unit, measurer.target_of(v)),
                                     folder, partial(measurer.time_units, measurer.target_of(v))
                                     if many else None) for v in variants}

    def estimate(self, row: Row, keep: dict | None = None) -> float | None:
        """Layer-table sum of a candidate on its target variant; None (and a note) when its graph
        cannot be cut. A target variant that cannot time a unit alone (a runtime refusing a
        fragment) uses the default variant's table from then on: its own whole measurements
        calibrate that table's scale for it, so its candidates are still ranked and measured.
        `keep` collects the per-unit estimate by model path (NetAdapt ranks layers by it)."""
        import onnx

        opts = row.cand.options
        model = onnx.load(row.path)
        other_runtime = "target" in dict(opts)
        if opts and opts not in self.borrowed:
            try:
                return self._table_estimate(opts, model, row.path, keep)
            except Exception as e:
                self.borrowed.add(opts)
                self.notes.append(
                    f"{row.cand.name}: no layer table of its own ({type(e).__name__}: "
                    f"{first_line(e)}); " + (
                        "its candidates on this runtime are measured whole instead of predicted "
                        "from another runtime's table" if other_runtime else
                        "this target variant is predicted from the default variant's table, "
                        "scaled by its own whole measurements"))
        if other_runtime and opts in self.borrowed:
            return None
        try:
            return self._table_estimate((), model, row.path, keep)
        except Exception as e:  # an uncuttable graph only costs the prediction, not the search
            self.notes.append(f"{row.cand.name}: no layer table ({type(e).__name__}: "
                              f"{first_line(e)}); measured whole only if no predicted candidate "
                              "is left")
            return None

    def _table_estimate(self, opts: tuple, model, path: str, keep: dict | None) -> float:
        est = self.tables[opts].estimate(model, self.feeds)
        if keep is not None:
            keep[path] = est
        return est.total_ms

    def whole_only(self, row: Row) -> bool:
        """Is the candidate on another runtime whose layer table cannot be built?"""
        return "target" in dict(row.cand.options) and row.cand.options in self.borrowed

    def units(self) -> dict[str, int]:
        """Layer units timed now and found in the store (the search's cost)."""
        return {"units_timed": sum(t.timed for t in self.tables.values()),
                "units_reused": sum(t.reused for t in self.tables.values())}
