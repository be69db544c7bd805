"""The root ``redcurrent`` group, its global options, and the one place errors become exit codes.

Every failure ends as ONE line on stderr and a non-zero exit, never a traceback:
usage errors exit 2, library and server errors exit 1, Ctrl-C exits 130, SIGTERM
exits 143 (env.py). Set ``REDCURRENT_DEBUG=1`` to get the traceback of an unexpected error.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import NoReturn

import click
from redis.exceptions import RedisError

import redcurrent
from redcurrent import RedcurrentError

from .env import Env
from .params import check_url

__all__ = ["cli", "run_main"]

# click >= 8.2 raises this for a group run without a command (older ones print the help).
_NO_ARGS_IS_HELP: type[click.UsageError] = getattr(
    click.exceptions, "NoArgsIsHelpError", type("_NeverRaised", (click.UsageError,), {})
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--url",
    envvar="REDIS_URL",
    metavar="URL",
    callback=check_url,
    help="Redis URL (default: $REDIS_URL, else localhost:6379 if it answers, "
    "else a private embedded server for this run).",
)
@click.option("--namespace", default="rc", show_default=True, help="Key prefix of the application.")
@click.option("--json", "json_mode", is_flag=True, help="Machine-readable JSON output.")
@click.option("--verbose", "-v", count=True, help="Library log lines: -v info, -vv debug.")
@click.version_option(redcurrent.__version__, prog_name="redcurrent")
@click.pass_context
def cli(ctx: click.Context, url: str | None, namespace: str, json_mode: bool, verbose: int) -> None:
    """Kafka-style topics and consumer groups on Redis: the operator's tool.

    \b
    First run:   redcurrent demo
    Topics:      redcurrent topics create orders --partitions 8
    Produce:     echo '{"id": 1}' | redcurrent produce orders --key customer-7
    Consume:     redcurrent consume orders --from-beginning
    Groups:      redcurrent groups describe orders billing
    """
    # The library logs what an operator of a long-running service wants; a one-shot
    # command shows only errors unless asked.
    level = {0: logging.ERROR, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    env = Env(url, namespace, json_mode)
    ctx.obj = env
    ctx.call_on_close(env.close)


def _register() -> None:
    from . import bench, console, consume, dlq, groups, offsets, produce, topics
    from .demo.command import demo

    cli.add_command(topics.topics)
    cli.add_command(groups.groups)
    cli.add_command(produce.produce)
    cli.add_command(consume.consume)
    cli.add_command(offsets.offsets)
    cli.add_command(dlq.dlq)
    cli.add_command(demo)
    cli.add_command(bench.bench)
    cli.add_command(console.console)


_register()


def _fail(message: str, code: int) -> NoReturn:
    first = " ".join(str(message).split()) or "failed"
    click.echo(f"redcurrent: error: {first}", err=True)
    sys.exit(code)


def run_main(argv: list[str] | None = None) -> None:
    """Run the CLI and turn every failure into one line on stderr plus an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="redcurrent", standalone_mode=False)
    except _NO_ARGS_IS_HELP as exc:  # a bare group: its help, not an error
        click.echo(exc.format_message())
        sys.exit(0)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _fail(exc.format_message() + hint, exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("redcurrent: interrupted", err=True)
        sys.exit(130)
    except (RedcurrentError, ValueError, TypeError, KeyError) as exc:
        _fail(_describe(exc), 1)
    except RedisError as exc:  # a server error the library did not translate
        _fail(f"Redis error: {type(exc).__name__}: {exc}", 1)
    except OSError as exc:
        _fail(f"{type(exc).__name__}: {exc}", 1)
    except Exception as exc:  # a bug: still one line unless asked for the traceback
        if os.environ.get("REDCURRENT_DEBUG"):
            traceback.print_exc()
        _fail(
            f"unexpected {type(exc).__name__}: {exc} (set REDCURRENT_DEBUG=1 for the traceback)", 1
        )
    sys.exit(rv if isinstance(rv, int) else 0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and not isinstance(exc, RedcurrentError):
        return f"missing key {exc}"  # plain KeyError quotes its argument
    return str(exc) or type(exc).__name__
