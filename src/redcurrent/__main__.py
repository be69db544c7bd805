"""``python -m redcurrent``: the ``redcurrent`` command line (see :mod:`redcurrent.cli`)."""

from __future__ import annotations

from redcurrent.cli import main

if __name__ == "__main__":
    main()
