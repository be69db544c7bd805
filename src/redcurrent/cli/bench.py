"""``redcurrent bench``: run the repository's benchmarks (benchmarks/produce.py, consume.py) briefly.

``--only cluster`` runs benchmarks/cluster.py instead (its own one node and 3 + 3 cluster).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from .context import pass_env
from .env import Env

__all__ = ["bench", "find_benchmarks"]

SCRIPTS = ("produce", "consume")
OPTIONAL = ("cluster",)  # run only when asked: it starts a cluster of its own


def find_benchmarks() -> Path | None:
    """``benchmarks/`` of the current directory, else of the source checkout this package runs from."""
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        candidate = base / "benchmarks"
        if (candidate / "produce.py").is_file() or (candidate / "consume.py").is_file():
            return candidate
    return None


@click.command(short_help="Run the benchmarks with a small count.")
@click.option(
    "--count",
    "-n",
    type=click.IntRange(min=100),
    default=5000,
    show_default=True,
    help="Messages per case (the benchmarks' own default is 100,000).",
)
@click.option(
    "--only",
    type=click.Choice(SCRIPTS + OPTIONAL),
    help="Run one of them (cluster: benchmarks/cluster.py, on its own 3+3 cluster).",
)
@pass_env
def bench(env: Env, count: int, only: str | None) -> None:
    """Run benchmarks/produce.py and benchmarks/consume.py with a small --count.

    Needs a source checkout (the benchmarks are not installed with the package).
    Ratios, not absolute rates, are what compare across machines.
    """
    where = find_benchmarks()
    if where is None:
        raise click.ClickException(
            "no benchmarks/ directory here or above the package: run it from a "
            "source checkout of redcurrent"
        )
    scripts = [where / f"{name}.py" for name in SCRIPTS + OPTIONAL if only == name]
    scripts = scripts or [where / f"{name}.py" for name in SCRIPTS]
    missing = [str(s) for s in scripts if not s.is_file()]
    if missing:
        raise click.ClickException(f"benchmark script not found: {', '.join(missing)}")
    # cluster.py starts its own servers: no server of ours to resolve (or start) for it
    child_env = {**os.environ} if only in OPTIONAL else {**os.environ, "REDIS_URL": env.url}
    for script in scripts:
        # one rep and a short latency run: a quick look, not the 3-rep measurement
        args = ["--count", str(count), "--reps", "1"]
        if script.stem == "consume":
            args += ["--latency-secs", "2"]
        click.echo(f"== {script.name} {' '.join(args)}", err=True)
        code = subprocess.call([sys.executable, str(script), *args], cwd=where, env=child_env)
        if code:
            raise click.ClickException(f"{script.name} exited with status {code}")
