"""The one progress bar: on stderr (stdout stays for results), transient, with elapsed time and a
free-text `info` field; a null context when progress is off (quiet runs, tests, CI logs)."""

from __future__ import annotations

from contextlib import nullcontext


def progress_bar(enabled: bool, label: str | None = None, *, count: bool = False):
    """A rich Progress (use it as a context manager; add tasks with an `info=` field) or a null
    context yielding None. `label` fixes the first column (default: each task's description);
    `count` adds a done/total column."""
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    cols = [TextColumn(label or "{task.description}"), BarColumn()]
    if count:
        cols.append(MofNCompleteColumn())
    cols += [TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
    return Progress(*cols, transient=True, console=Console(stderr=True))
