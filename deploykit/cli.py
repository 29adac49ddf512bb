"""`deploykit VERB ...`: one verb per stage. Each verb is a module in deploykit/commands/ with

    HELP = "one line"
    def add_arguments(parser): ...
    def run(args) -> int: ...

Command modules must import nothing heavy at top level, so that `deploykit --help` is instant.
Every DeployKitError becomes one line on stderr and exit code 2; a traceback is a bug.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys

from ._version import __version__
from .errors import DeployKitError


def _command_modules():
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield info.name, importlib.import_module(f"{commands.__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploykit",
        description="Export, compress, compile and profile models on real targets; "
                    "latency is a distribution, never a single float.")
    parser.add_argument("--version", action="version", version=f"deploykit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _command_modules():
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser




class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like ^C: the running command unwinds (its staged outputs and temporary
    folders are removed on the way out) and deploykit exits 143."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from .measure.memory import own_process

    own_process()  # the CLI's process is deploykit's: memory phases may use the kernel's mark
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (deploykit.cli.main called from a worker thread)
        previous = None
    try:
        if hasattr(args, "store"):  # a bad --store / $DEPLOYKIT_STORE is refused before any work
            from .commands._common import store_path

            store_path(args)
        return int(args._run(args) or 0)
    except DeployKitError as e:
        msg = " ".join(str(e).split())
        print(f"deploykit: error: {msg}", file=sys.stderr)
        return e.exit_code
    except Terminated:
        print("deploykit: terminated (SIGTERM); no output was committed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("deploykit: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("deploykit: error: out of memory (an input shape or a model too large for this "
              "machine?); give smaller --shape values", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
