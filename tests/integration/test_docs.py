"""The documentation's code runs: every ``python`` block of the pages in :data:`PAGES` is a
whole program, run as written (or, for the TLS example, with its URL pointed at a TLS endpoint
made here), and the site builds: ``mkdocs build --strict`` (a broken link, a missing page or
an API reference that no longer matches the code fails it)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from redcurrent import Admin
from redcurrent.embedded import EmbeddedServer

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# The pages whose ```python blocks are whole programs, run as written; ```py marks another
# library's code shown for comparison (migrating.md), which needs that library's server.
PAGES = [
    *sorted((DOCS / "guides").glob("*.md")),
    *(DOCS / name for name in ("exactly-once.md", "failure-handling.md", "index.md", "operations.md")),
    *(DOCS / name for name in ("security.md", "sync.md")),
]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
# security.md's TLS program needs a TLS server, which the embedded binaries are built
# without: its test runs it with this URL replaced by a TLS-terminating proxy's (see below).
TLS_EXAMPLE_URL = "rediss://redis.example.com:6380/0?ssl_ca_certs=/etc/ssl/my-ca.pem"


def blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            found.append((f"{page.stem}-{i + 1}", code))
    return found


PROGRAMS = [(name, code) for name, code in blocks() if TLS_EXAMPLE_URL not in code]


def _env() -> dict[str, str]:
    """Without REDIS_URL each program starts its own embedded server, as a reader's would."""
    return {k: v for k, v in os.environ.items() if k != "REDIS_URL"}


@pytest.mark.parametrize(("name", "code"), PROGRAMS, ids=[n for n, _ in PROGRAMS])
def test_every_docs_program_runs_as_written(name: str, code: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"{name}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


async def test_the_tls_program_runs_over_verified_tls(tmp_path: Path) -> None:
    """security.md's program, its URL replaced by a ``rediss://`` one that verifies a
    TLS-terminating proxy in front of a private server against a CA made here (the
    proxy and the CA are tests/integration/test_security.py's): the record is stored."""
    import test_security as security  # skips when cryptography is missing

    [code] = [code for _, code in blocks() if TLS_EXAMPLE_URL in code]
    pki = security.make_pki(tmp_path)
    server = EmbeddedServer().start()
    try:
        async with security.TlsTerminator(server.port, pki) as terminator:
            url = security.tls_url(terminator.port, pki.ca)
            run = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code.replace(TLS_EXAMPLE_URL, url), cwd=tmp_path,
                env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(run.communicate(), 60)
            assert run.returncode == 0, f"{out.decode()[-2000:]}\n{err.decode()[-3000:]}"
            assert terminator.handshakes >= 1  # it really went through TLS
        async with Admin(server.url) as admin:
            assert (await admin.describe_topic("orders")).length == 1
    finally:
        server.stop()


def test_only_migrating_shows_code_that_is_not_run() -> None:
    for page in PAGES:
        foreign = page.read_text().count("```py\n")
        assert foreign == 0 or page.name == "migrating.md", page.name


def test_the_docs_site_builds_strictly_with_the_api_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    api = (site / "api" / "index.html").read_text()
    for documented in ("redcurrent.Producer.send_batch", "redcurrent.Consumer.process_batch",
                       "redcurrent.Admin.requeue_dead_letters", "embedded_cluster"):
        assert documented in api, documented
    assert (site / "architecture" / "index.html").exists()
