"""The redcurrent error tree.

Every error the library raises on purpose derives from :class:`RedcurrentError`;
redis-py exceptions are translated into it in exactly one place
(:func:`translate`), so callers catch one family::

    RedcurrentError
     ├── ConfigError (also ValueError)         bad argument or option: fix the call
     ├── SerializationError (also ValueError)  a value the serializer cannot encode
     ├── MessageTooLargeError (also ValueError) raise max_message_bytes or shrink the value
     ├── TopicError
     │    ├── UnknownTopicError                create the topic or turn auto-create on
     │    ├── TopicExistsError                 pass exist_ok=True or pick another name
     │    └── PartitionMissingError            a partition has no marker: re-read the topic
     ├── InvalidPartitionsError (also ValueError)  partitions only grow
     ├── GroupError
     │    ├── UnknownGroupError
     │    └── GroupMissingError                the Redis group of a partition vanished: recreate it
     ├── FencedError                           this consumer no longer owns the partition, or a
     │    │                                    newer producer instance took its transactional_id
     │    ├── FencedInstanceError              stop for good: member id taken over, or group deleted
     │    ├── PartitionBusyError               another member still holds it: claim again later
     │    └── LeaseExpiredError                its owner key expired: nobody holds it, claim it back
     ├── DecodeError                           a stream entry redcurrent cannot read (dead-lettered)
     ├── ConsumerStoppedError                  the consumer was stopped
     ├── IllegalStateError (also RuntimeError) a call that does not fit the object's state
     ├── ProducerClosedError                   the producer was closed
     ├── StaleSequenceError                    a batch older than the partition's last: not written
     ├── StaleRouteError                       routed with the partition count before a growth: re-route
     ├── TransactionError                      a transaction that cannot run as one script: nothing written
     ├── RequeueError                          some dead letters could not be requeued (.moved, .failed)
     ├── NotEnoughReplicasError (retriable)    the primary stored it; too few replicas confirmed
     └── RedcurrentConnectionError (retriable) Redis is unreachable or timed out
          ├── AmbiguousWriteError              the write may or may not be stored
          └── ClientPoolExhaustedError         this client ran out of pooled connections

``retriable`` tells whether retrying the same call later may succeed (aiokafka's
convention). Messages never contain credentials: :func:`redact` scrubs URLs.

The subclasses a script's status maps to (``FencedInstanceError``, ``PartitionBusyError``,
``LeaseExpiredError``, ``GroupMissingError``, ``PartitionMissingError``,
``StaleSequenceError``, ``StaleRouteError``, ``TransactionAbortedError``; see :mod:`redcurrent.replies`) are how the library acts on a
reply; they are not exported: user code meets them, if at all, as their exported bases.
"""

from __future__ import annotations

import re

__all__ = [
    "AmbiguousWriteError",
    "ConfigError",
    "ConsumerStoppedError",
    "DecodeError",
    "ClientPoolExhaustedError",
    "FencedError",
    "FencedInstanceError",
    "GroupMissingError",
    "LeaseExpiredError",
    "PartitionBusyError",
    "PartitionMissingError",
    "StaleRouteError",
    "TransactionAbortedError",
    "TransactionError",
    "StaleSequenceError",
    "GroupError",
    "IllegalStateError",
    "InvalidPartitionsError",
    "MessageTooLargeError",
    "NotEnoughReplicasError",
    "ProducerClosedError",
    "RedcurrentConnectionError",
    "RedcurrentError",
    "RequeueError",
    "SerializationError",
    "TopicError",
    "TopicExistsError",
    "UnknownGroupError",
    "UnknownTopicError",
    "redact",
    "translate",
]

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*:/*)[^/\s]*@")
_PASSWORD_WORDS = re.compile(r"(?i)(password|passwd|pwd|auth)(['\"]?\s*[=:]\s*['\"]?)[^\s,'\")]+")


def redact(text: str) -> str:
    """Remove credentials from a URL or a message (``redis://u:p@h`` -> ``redis://***@h``)."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    return _PASSWORD_WORDS.sub(r"\1\2***", text)


class RedcurrentError(Exception):
    """Base of every error raised by redcurrent."""

    retriable: bool = False


class ConfigError(RedcurrentError, ValueError):
    """An argument or option is invalid; the message says what to change."""


class SerializationError(RedcurrentError, ValueError):
    """The value could not be serialized; nothing was written."""


class MessageTooLargeError(RedcurrentError, ValueError):
    """The encoded message exceeds ``max_message_bytes``; nothing was written."""


class TopicError(RedcurrentError):
    """A problem with a topic."""


class UnknownTopicError(TopicError, KeyError):
    """The topic does not exist (and auto-create is off)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown topic"


class TopicExistsError(TopicError):
    """The topic already exists."""


class InvalidPartitionsError(TopicError, ValueError):
    """A partition count or index is invalid (partitions can only grow)."""


class GroupError(RedcurrentError):
    """A problem with a consumer group."""


class UnknownGroupError(GroupError, KeyError):
    """The group does not exist on this topic."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown group"


class FencedError(RedcurrentError):
    """This consumer does not own the partition (any more): nothing was fetched or acked.

    The partition moved to another member after a rebalance or after this consumer
    lost its lease. Drop local state for it; the message will be redelivered to the
    new owner if it was not acked.

    A producer with a ``transactional_id`` raises it when a newer instance with the same
    id started (Kafka's ProducerFencedException): nothing of the refused send or commit
    was written, and every later send of this producer raises it too. Close it.
    """


class FencedInstanceError(FencedError):
    """This instance is fenced for good (Kafka's fenced instance id): a newer instance
    took its member id over, or an operator deleted its group. It stops; it must not
    rejoin and fight for the partitions."""


class PartitionBusyError(FencedError):
    """Another member still holds the partition's owner key: claim it again after
    ``retry_ms`` (the key's remaining time to live)."""

    def __init__(self, message: str, retry_ms: int) -> None:
        super().__init__(message)
        self.retry_ms = retry_ms


class LeaseExpiredError(FencedError):
    """The partition's owner key expired (Redis was away): nobody holds it, and it is
    never recreated by a refresh. Claim it again if it is still assigned."""


class DecodeError(RedcurrentError):
    """A stream entry could not be decoded (corrupt, foreign, unknown format version).

    Consumers never raise it to handlers: such an entry goes to the dead-letter stream.
    """


class GroupMissingError(GroupError):
    """The Redis consumer group of a partition vanished (Redis restarted empty):
    recreate it (docs/architecture.md §12)."""


class PartitionMissingError(TopicError):
    """A partition has no marker (its topic was deleted, or the server lost its data):
    nothing was written; read the topic again (docs/architecture.md §10)."""


class StaleSequenceError(RedcurrentError):
    """A produce batch's sequence is older than the partition's last for this producer
    id: nothing was written."""


class StaleRouteError(RedcurrentError):
    """A produce batch was routed with a topic version older than the partition's barrier
    (a growth with ``preserve_key_order`` since): nothing was written; the producer reads
    the topic again and routes the records with the new partition count."""

    def __init__(self, message: str, floor: int) -> None:
        super().__init__(message)
        self.floor = floor  # the oldest routing version the partition accepts


class TransactionError(RedcurrentError):
    """A transaction that cannot be committed as one script: on Redis Cluster its records'
    keys span several hash slots (the message names them; use co-located topics), or it
    was used after it ended. Nothing of it was written (docs/exactly-once.md)."""


class TransactionAbortedError(RedcurrentError):
    """A batch of a transaction was not written because another batch of the same
    commit was refused (private: the commit raises the refusal itself)."""


class ConsumerStoppedError(RedcurrentError):
    """The consumer has been stopped."""


class ProducerClosedError(RedcurrentError):
    """The producer has been closed."""


class IllegalStateError(RedcurrentError, RuntimeError):
    """The call does not fit the object's state (aiokafka's name): e.g. ``pause()``
    before ``start()``, or a second concurrent ``process()`` on one consumer."""


class NotEnoughReplicasError(RedcurrentError):
    """``acks="replica"``: the primary stored the records, but fewer replicas than
    required confirmed them in time (Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND).

    The producer has already retried the same batch (same producer id and sequence,
    stored once) until ``delivery_timeout``. The records are on the primary: sending
    them again as new records stores them twice; retriable means the cluster may
    confirm later sends once a replica is back.
    """

    retriable = True


class RedcurrentConnectionError(RedcurrentError, ConnectionError):
    """Redis could not be reached or did not answer in time. Retry later."""

    retriable = True


class AmbiguousWriteError(RedcurrentConnectionError):
    """A write was sent and its reply lost (and the producer gave up retrying it, or
    idempotence is off): it may or may not be stored.

    ``retriable`` says exactly whether sending the records again is safe: True only when
    every record of the batch has a ``dedup_key`` (a resend with the same keys within the
    topic's ``dedup_window`` returns the stored record); otherwise a plain resend, through
    this producer or any other, may store them twice (docs/exactly-once.md). For a
    transaction it means all of it or none of it was stored.
    """

    retriable = False


class ClientPoolExhaustedError(RedcurrentConnectionError):
    """The client's connection pool had no free connection (``max_connections``).

    Redis itself may be fine: give the client a larger pool, or use fewer concurrent calls.
    """


def translate(exc: BaseException, what: str) -> RedcurrentError:
    """Turn a redis-py or OS error into a redcurrent error, without credentials."""
    from redis import exceptions as rex

    if isinstance(exc, RedcurrentError):
        return exc
    detail = redact(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, rex.MaxConnectionsError):
        return ClientPoolExhaustedError(
            f"{what}: the client's connection pool is exhausted ({detail}); Redis itself may be "
            "fine: raise max_connections on the client or make fewer concurrent calls"
        )
    if isinstance(exc, TimeoutError | rex.TimeoutError) and not str(exc):
        detail = f"{type(exc).__name__}: no reply in time"
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError):
        return RedcurrentConnectionError(f"{what}: authentication failed ({detail}); check credentials")
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | OSError | TimeoutError):
        return RedcurrentConnectionError(f"{what}: Redis unreachable ({detail}); retry later")
    text = str(exc)
    if isinstance(exc, rex.NoPermissionError) or "NOPERM" in text or "ACL failure" in text \
            or "can't run this command" in text:
        return RedcurrentError(f"{what}: the Redis ACL user lacks a permission ({detail})")
    return RedcurrentError(f"{what}: {detail}")


class RequeueError(RedcurrentError):
    """Some dead letters could not be requeued; every other one was.

    ``moved`` is how many went back to their partitions, ``failed`` maps the
    dead-letter id of each one left in the dead-letter stream to why (inspect it with
    ``Admin.dead_letters``, fix or delete it).
    """

    def __init__(self, message: str, moved: int, failed: dict[str, str]) -> None:
        super().__init__(message)
        self.moved = moved
        self.failed = failed
