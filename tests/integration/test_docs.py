"""The documentation site builds: ``mkdocs build --strict`` (a broken link, a missing
page or an API reference that no longer matches the code fails it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
