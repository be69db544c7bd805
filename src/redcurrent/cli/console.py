"""``redcurrent console``: serve the web console (needs the ``console`` extra)."""

from __future__ import annotations

import click

from .context import pass_env
from .env import Env

__all__ = ["console"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on. Anything but localhost exposes topic data: use --auth-token.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--allow-writes", is_flag=True,
              help="Enable requeue, delete, purge and offset resets (refused with 403 otherwise).")
@click.option("--auth-token", envvar="REDCURRENT_CONSOLE_TOKEN", metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' (or ?token=TOKEN once). "
              "Default: $REDCURRENT_CONSOLE_TOKEN.")
@pass_env
def console(env: Env, host: str, port: int, allow_writes: bool, auth_token: str | None) -> None:
    """Serve the web console: topics, groups and lag, live rates, dead letters, a message browser.

    \b
    redcurrent console                       # http://127.0.0.1:8080, read-only
    redcurrent console --allow-writes        # requeue / delete / purge, each confirmed
    """
    try:
        from redcurrent.console import serve
    except ImportError as exc:
        raise click.UsageError(
            f"the console needs the 'console' extra ({exc}); run: pip install 'redcurrent[console]'"
        ) from None
    if host not in ("127.0.0.1", "localhost", "::1") and not auth_token:
        click.echo(f"redcurrent: warning: serving on {host} without --auth-token", err=True)
    click.echo(f"redcurrent console on http://{host}:{port} ({'read-write' if allow_writes else 'read-only'})",
               err=True)
    serve(env.url, host=host, port=port, namespace=env.namespace, allow_writes=allow_writes,
          auth_token=auth_token)
