"""The search's progress bar: how much of the candidate space is done, and the best so far."""

from __future__ import annotations

from typing import Sequence

from .recommend import best
from .result import Row


class Bar:
    """Progress over the candidate space, showing the current best."""

    def __init__(self, enabled: bool, total: int):
        self._p = None
        if enabled:
            from ..progress import progress_bar

            self._p = progress_bar(True, "search", count=True)
            self._p.start()
            self._task = self._p.add_task("", total=total, info="")

    def advance(self, row: Row, n: int = 1) -> None:
        if self._p:
            self._p.advance(self._task, n)

    def grow(self, row: Row) -> None:
        """One more candidate than the space counted at the start (a NetAdapt proposal)."""
        if self._p:
            task = self._p.tasks[0]
            self._p.update(self._task, total=(task.total or 0) + 1, advance=1)

    def describe(self, text: str) -> None:
        if self._p:
            self._p.update(self._task, info=text)

    def close(self) -> None:
        if self._p:
            self._p.stop()

    def show_best(self, rows: Sequence[Row], budget_ms: float | None) -> None:
        """The best candidate measured so far, in the bar's text."""
        top = best([r for r in rows if r.median is not None], budget_ms)
        if top is not None:
            self.describe(f"best {top.median:.3f} ms @ fidelity {top.fidelity:.4f} "
                          f"({top.cand.name})")
