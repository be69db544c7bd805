"""What every command shares: the Env it runs in (``pass_env``) and ``--json``.

Commands import this module, and ``app`` imports the commands: imports run one way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .env import Env

__all__ = ["json_option", "pass_env"]

F = TypeVar("F", bound=Callable[..., Any])

pass_env = click.make_pass_decorator(Env)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    env = ctx.find_object(Env)
    if value and env is not None:
        env.json = True


def json_option(f: F) -> F:
    """``--json`` accepted after the subcommand too (``redcurrent topics list --json``)."""
    return click.option(
        "--json",
        "json_mode",
        is_flag=True,
        expose_value=False,
        is_eager=False,
        callback=_set_json,
        help="Machine-readable JSON output.",
    )(f)
