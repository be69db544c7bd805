"""The documentation site builds: ``mkdocs build --strict`` (a broken link, a missing
page or an API reference that no longer matches the code fails it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
# The guides' ```python blocks are whole programs, run as written; ```py marks another
# library's code shown for comparison (migrating.md), which needs that library's server.
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks() -> list[tuple[str, str]]:
    found = []
    for page in GUIDES:
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            found.append((f"{page.stem}-{i + 1}", code))
    return found


@pytest.mark.parametrize(("name", "code"), blocks(), ids=[n for n, _ in blocks()])
def test_every_guide_program_runs_as_written(name: str, code: str, tmp_path: Path) -> None:
    """Without REDIS_URL each program starts its own embedded server, as a reader's would."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"{name}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_only_migrating_shows_code_that_is_not_run() -> None:
    for page in GUIDES:
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
