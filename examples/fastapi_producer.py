"""A FastAPI service that publishes one keyed event per request.

The Producer lives in the app's lifespan: started once, shared by every request
(concurrent requests coalesce into few Redis round trips), flushed and closed on
shutdown so no accepted event is left unsent. Run it with uvicorn:

    REDIS_URL=redis://localhost:6379 uvicorn examples.fastapi_producer:app

or ``python examples/fastapi_producer.py`` to post a few orders through the app in-process.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from redcurrent import Admin, Producer, RedcurrentError

TOPIC = "orders"


class Order(BaseModel):
    customer: str
    amount: float
    items: list[str] = []


def create_app(url: str | None = None, namespace: str = "rc") -> FastAPI:
    """The service, publishing to ``url`` (default: $REDIS_URL)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Admin(url, namespace=namespace) as admin:
            await admin.create_topic(TOPIC, partitions=8, exist_ok=True)
        async with Producer(url, namespace=namespace) as producer:  # close() flushes
            app.state.producer = producer
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/orders", status_code=202)
    async def place_order(order: Order, request: Request) -> dict[str, Any]:
        producer: Producer = request.app.state.producer
        try:
            # The customer is the key: all of one customer's orders keep their order.
            meta = await producer.send(TOPIC, order.model_dump(), key=order.customer)
        except RedcurrentError as exc:
            # Typed errors say whether a retry is safe: 503 invites the client to retry.
            raise HTTPException(503 if exc.retriable else 500, str(exc)) from exc
        return {"partition": meta.partition, "id": meta.id}

    return app


app = create_app(os.environ.get("REDIS_URL"))


if __name__ == "__main__":
    from _common import redis_url
    from fastapi.testclient import TestClient

    with redis_url() as url, TestClient(create_app(url)) as client:
        for i in range(5):
            reply = client.post("/orders", json={"customer": f"c{i % 2}", "amount": 9.5 * i})
            print(reply.status_code, reply.json())
