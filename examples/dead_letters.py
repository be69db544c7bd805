"""Dead letters: see why messages failed, fix the cause, put them back.

A handler that raises is retried with backoff; after ``max_attempts`` the message is
moved to the group's dead-letter stream (with the error, its type, the traceback and
the attempts) and its partition goes on. An operator then inspects the dead letters,
fixes the cause (here: a missing exchange rate), and requeues them: they go back to
their original partitions with their key and headers, and are handled again.

    python examples/dead_letters.py
"""

from __future__ import annotations

import asyncio

from redcurrent import Admin, Backoff, Consumer, Message, Producer

TOPIC, GROUP = "invoices", "accounting"
RATES = {"EUR": 1.0, "USD": 0.92}  # GBP is missing: its invoices fail until it is added


async def consume_until(url: str | None, namespace: str, settled: list[str], target: int) -> None:
    """Run the group until ``target`` invoices are settled (or dead-lettered and counted)."""

    async def settle(msg: Message) -> None:
        rate = RATES[msg.value["currency"]]  # KeyError for an unknown currency
        settled.append(f"{msg.value['invoice']} = {msg.value['amount'] * rate:.2f} EUR")

    async with Admin(url, namespace=namespace) as admin, Consumer(
        TOPIC, group=GROUP, url=url, namespace=namespace, start="earliest",
        max_attempts=3, backoff=Backoff(initial=0.01, max=0.05),
    ) as consumer:
        worker = asyncio.create_task(consumer.process(settle))
        while len(settled) + await admin.count_dead_letters(TOPIC, GROUP) < target:
            await asyncio.sleep(0.05)
        await consumer.stop()
        await worker


async def main(url: str | None, namespace: str = "rc") -> list[str]:
    async with Admin(url, namespace=namespace) as admin:
        await admin.create_topic(TOPIC, partitions=2, exist_ok=True)
    async with Producer(url, namespace=namespace) as producer:
        for i, currency in enumerate(["EUR", "GBP", "USD", "GBP"]):
            await producer.send(TOPIC, {"invoice": i, "amount": 100.0, "currency": currency}, key=f"client-{i}")

    settled: list[str] = []
    await consume_until(url, namespace, settled, target=4)
    print(f"settled {len(settled)}: {settled}")

    async with Admin(url, namespace=namespace) as admin:
        for letter in await admin.dead_letters(TOPIC, GROUP):
            print(f"dead letter {letter.dead_letter_id}: invoice {letter.value['invoice']} "
                  f"from partition {letter.partition} after {letter.attempts} attempts: "
                  f"{letter.error_type}: {letter.error}")
        RATES["GBP"] = 1.17  # the fix is deployed
        moved = await admin.requeue_dead_letters(TOPIC, GROUP)
        print(f"requeued {moved} dead letter(s)")

    await consume_until(url, namespace, settled, target=4)
    async with Admin(url, namespace=namespace) as admin:
        left = await admin.count_dead_letters(TOPIC, GROUP)
    print(f"settled {len(settled)} in all, {left} dead letter(s) left: {settled}")
    return settled


if __name__ == "__main__":
    from _common import redis_url

    with redis_url() as url:
        asyncio.run(main(url))
