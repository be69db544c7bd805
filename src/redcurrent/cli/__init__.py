"""The ``redcurrent`` command: topics, groups, offsets, dead letters, produce, consume, demo.

Installed as a console script by ``pip install 'redcurrent[cli]'`` (or ``[embedded]``);
also runs as ``python -m redcurrent``. It uses only the public API, plus
``redcurrent.embedded`` for the private server and ``redcurrent.keys`` for the
groupless, read-only ``consume``. Nothing in the library imports this package.

Click and Rich are imported lazily, so ``python -m redcurrent.cli.demo.worker``
(a demo consumer process) starts without them.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``redcurrent`` console script; exits the process."""
    try:
        from .app import run_main
    except ImportError as exc:  # the extra is not installed: one line, no traceback
        print(
            f"redcurrent: the command line needs the 'cli' extra ({exc}); "
            "run: pip install 'redcurrent[cli]'",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    run_main(argv)


def __getattr__(name: str) -> Any:
    if name == "cli":  # the Click group, for click.testing.CliRunner
        from .app import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
