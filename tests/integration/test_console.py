"""The web console, driven in a real headless Chromium (Playwright) against a real server.

Chromium: the system's (Debian's ``chromium``, which ``.ci/run`` installs) or
Playwright's own. Without one these tests skip, except under CI (``CI`` set), where a
missing browser is a failure. ``RC_CONSOLE_SCREENSHOTS=1`` also writes each page's
screenshot to docs/console/ (the pictures in docs/console.md).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from redcurrent import Admin, Consumer, Message, Producer, Record

playwright_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")

from redcurrent.console import create_app  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "console"
SCRIPT_BODY = "<script>document.title='pwned';window.pwned=1</script>"


def run(coro: Any) -> Any:
    """asyncio.run on a thread of its own (Playwright's sync API owns this thread's loop)."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ConsoleServer:
    """The console app served by uvicorn on a thread of its own."""

    def __init__(self, url: str, namespace: str, **options: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(url, namespace=namespace, **options), host="127.0.0.1",
                                port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ConsoleServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "console did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium()
    with playwright_api.sync_playwright() as p:
        try:
            launched = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        except Exception as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"no Chromium to drive ({exc.__class__.__name__}); install Debian's chromium")
        yield launched
        launched.close()


async def _fill(url: str, namespace: str) -> None:
    """A topic with messages, a group that handled them, and one dead letter."""
    async with Admin(url, namespace=namespace) as admin:
        await admin.create_topic("orders", partitions=4)
    async with Producer(url, namespace=namespace) as producer:
        await producer.send_batch("orders", [Record({"n": i}, key=f"customer-{i % 5}") for i in range(20)])
        await producer.send("orders", {"body": SCRIPT_BODY}, key="<b>bold</b>", partition=1)
        await producer.send("orders", "poison", key="poison", partition=2)
    handled: list[Message] = []

    async def handle(msg: Message) -> None:
        if msg.value == "poison" and msg.attempts < 3 and not msg.headers.get("fixed"):
            raise ValueError("cannot bill <poison>")
        handled.append(msg)

    async with Consumer("orders", group="billing", url=url, namespace=namespace, start="earliest",
                        max_attempts=1) as consumer, Admin(url, namespace=namespace) as admin:
        worker = asyncio.create_task(consumer.process(handle))
        while len(handled) < 21 or await admin.count_dead_letters("orders", "billing") < 1:
            await asyncio.sleep(0.05)
        await consumer.stop()
        await worker


def shoot(page: Any, name: str) -> None:
    if os.environ.get("RC_CONSOLE_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)


def test_console_pages_agree_with_admin_and_requeue_works_in_the_browser(
    browser: Any, redis_url: str, namespace: str
) -> None:
    run(_fill(redis_url, namespace))

    async def facts() -> tuple[Any, Any, Any]:
        async with Admin(redis_url, namespace=namespace) as admin:
            return (await admin.describe_topic("orders"), await admin.describe_group("orders", "billing"),
                    await admin.dead_letters("orders", "billing"))

    info, group, [dead] = run(facts())
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    with ConsoleServer(redis_url, namespace, allow_writes=True) as console:
        page.goto(console.base + "/")
        row = page.locator("tr", has_text="orders")
        assert row.locator("td").nth(1).inner_text() == "4"
        assert int(row.locator("td").nth(2).inner_text()) == sum(p.length for p in info.partition_info) == 22
        assert int(row.locator("td").nth(4).inner_text()) == sum(p.bytes or 0 for p in info.partition_info) > 0
        shoot(page, "topics")

        page.click("text=orders")
        assert page.locator("h3#group-billing").is_visible()
        text = page.inner_text("main")
        assert f"epoch {group.epoch}" in text and "lag 0" in text
        for p in info.partition_info:
            cells = page.locator(f"tr#rate-{p.partition} td")
            assert int(cells.nth(1).inner_text()) == p.length
        shoot(page, "topic")

        # live rates: produce while the page is open; the produced/s cell moves, no reload
        async def more() -> None:
            async with Producer(redis_url, namespace=namespace) as producer:
                for _ in range(10):
                    await producer.send_batch("orders", [Record({"n": i}, partition=3) for i in range(50)])
                    await asyncio.sleep(0.2)

        run(more())
        page.wait_for_function("() => parseFloat(document.querySelector('#rate-3 .produced').textContent) > 0",
                               timeout=10_000)
        expected = info.partition_info[3].length + 500
        page.wait_for_function(f"() => document.querySelector('#rate-3 .length').textContent == '{expected}'",
                               timeout=10_000)

        # the message browser shows user data as text: the <script> body is displayed, not run
        page.goto(console.base + "/topics/orders/partitions/1")
        assert SCRIPT_BODY in page.inner_text("main") and "<b>bold</b>" in page.inner_text("main")
        assert page.title() != "pwned" and page.evaluate("() => window.pwned === undefined")
        assert page.locator("main b").count() == 0  # the key's <b> is not markup
        shoot(page, "browse")

        # dead letters: the list, one with its context, then requeue through a confirmation
        page.goto(console.base + "/topics/orders/groups/billing/dead-letters")
        assert dead.dead_letter_id in page.inner_text("main")
        shoot(page, "dead-letters")
        page.click(f"text={dead.dead_letter_id}")
        assert "cannot bill <poison>" in page.inner_text("main") and "ValueError" in page.inner_text("main")
        shoot(page, "dead-letter")
        page.click("text=requeue…")
        assert "Requeue dead letter" in page.inner_text("main")
        page.click("#confirm")
        page.wait_for_url("**/dead-letters")
        assert "No dead letters." in page.inner_text("main")
    assert dialogs == []

    async def requeued() -> tuple[int, list[Message]]:
        async with Admin(redis_url, namespace=namespace) as admin:
            return (await admin.count_dead_letters("orders", "billing"),
                    await admin.read_partition("orders", 2))

    left, partition2 = run(requeued())
    assert left == 0 and [m.value for m in partition2].count("poison") == 2  # the original and the requeued copy


def test_writes_are_refused_without_allow_writes(browser: Any, redis_url: str, namespace: str) -> None:
    run(_fill(redis_url, namespace))

    async def dead_id() -> str:
        async with Admin(redis_url, namespace=namespace) as admin:
            return (await admin.dead_letters("orders", "billing"))[0].dead_letter_id

    dl = run(dead_id())
    page = browser.new_page()
    with ConsoleServer(redis_url, namespace) as console:
        page.goto(f"{console.base}/topics/orders/groups/billing/dead-letters/{dl}/requeue")
        assert "Writes are disabled" in page.inner_text("main")
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.click("#confirm")
        assert posted.value.status == 403
        for path in (f"dead-letters/{dl}/delete", "dead-letters/purge", "offsets"):
            reply = page.request.post(f"{console.base}/topics/orders/groups/billing/{path}", form={"confirm": "yes"})
            assert reply.status == 403, path

    async def still() -> int:
        async with Admin(redis_url, namespace=namespace) as admin:
            return await admin.count_dead_letters("orders", "billing")

    assert run(still()) == 1


def test_an_auth_token_is_required_when_set(browser: Any, redis_url: str, namespace: str) -> None:
    page = browser.new_page()
    with ConsoleServer(redis_url, namespace, auth_token="s3cret") as console:
        assert page.goto(console.base + "/").status == 401
        assert page.goto(console.base + "/?token=wrong").status == 401
        assert page.goto(console.base + "/?token=s3cret").status == 200
        assert page.goto(console.base + "/").status == 200  # the cookie carries it on
