"""A Flask service that publishes one keyed event per request, with the blocking client.

Flask's request handlers are plain functions on threads, so this uses
``redcurrent.sync.Producer``: one per process, made when the app is created and shared
by every request thread (their sends coalesce into few Redis round trips), closed at
exit, which flushes it so no accepted event is left unsent. Run it with:

    REDIS_URL=redis://localhost:6379 flask --app 'examples.flask_sync_producer:create_app()' run

or ``python examples/flask_sync_producer.py`` to post a few orders through the app in-process.
"""

from __future__ import annotations

import atexit
from typing import Any

from flask import Flask, request

from redcurrent import RedcurrentError
from redcurrent.sync import Admin, Producer

TOPIC = "orders"


def create_app(url: str | None = None, namespace: str = "rc") -> Flask:
    """The service, publishing to ``url`` (default: $REDIS_URL)."""
    with Admin(url, namespace=namespace) as admin:
        admin.create_topic(TOPIC, partitions=8, exist_ok=True)
    # One producer for the whole process: thread-safe, and it connects on first use.
    # (Made before a fork, as gunicorn's preload does, it still works in each worker.)
    producer = Producer(url, namespace=namespace)
    atexit.register(producer.close)  # flushes; redcurrent.sync would close it at exit anyway

    app = Flask(__name__)
    app.extensions["redcurrent.producer"] = producer

    @app.post("/orders")
    def place_order() -> tuple[dict[str, Any], int]:
        order = request.get_json(silent=True)
        if not isinstance(order, dict) or not isinstance(order.get("customer"), str) \
                or not isinstance(order.get("amount"), int | float):
            return {"error": "expected JSON with a customer (string) and an amount (number)"}, 400
        try:
            # The customer is the key: all of one customer's orders keep their order.
            meta = producer.send(TOPIC, order, key=order["customer"])
        except RedcurrentError as exc:
            # Typed errors say whether a retry is safe: 503 invites the client to retry.
            return {"error": str(exc)}, 503 if exc.retriable else 500
        return {"partition": meta.partition, "id": meta.id}, 202

    return app


if __name__ == "__main__":
    from _common import redis_url

    with redis_url() as url:
        app = create_app(url)
        client = app.test_client()
        for i in range(5):
            reply = client.post("/orders", json={"customer": f"c{i % 2}", "amount": 9.5 * i})
            print(reply.status_code, reply.get_json())
        app.extensions["redcurrent.producer"].close()  # before the embedded server stops
