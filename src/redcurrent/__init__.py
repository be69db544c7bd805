"""redcurrent: Kafka-style partitioned topics and consumer groups on Redis Streams.

Producing::

    async with redcurrent.Producer("redis://localhost:6379") as producer:
        await producer.send("orders", {"id": 1}, key="customer-7")
"""

from __future__ import annotations

from .admin import Admin
from .consumer import Consumer
from .deadletter import DeadLetterRecord
from .errors import (
    AmbiguousWriteError,
    ClientPoolExhaustedError,
    ConfigError,
    ConsumerStoppedError,
    DecodeError,
    FencedError,
    GroupError,
    IllegalStateError,
    InvalidPartitionsError,
    MessageTooLargeError,
    NotEnoughReplicasError,
    ProducerClosedError,
    RedcurrentConnectionError,
    RedcurrentError,
    RequeueError,
    SerializationError,
    TopicError,
    TopicExistsError,
    TransactionError,
    UnknownGroupError,
    UnknownTopicError,
)
from .offsets import id_key, next_id
from .partitioner import StickyPartitioner, murmur3_32, partition_for_key
from .producer import Producer
from .retry import Backoff, BatchError, DeadLetter, Retry, RetryPolicy
from .serde import Deserializer, Serializer
from .share import ShareConsumer
from .signals import run_consumer
from .structs import (
    GroupInfo,
    InFlightMessage,
    MemberInfo,
    Message,
    Output,
    PartitionGroupInfo,
    PartitionInfo,
    Record,
    RecordMetadata,
    ShareGroupInfo,
    ShareMemberInfo,
    TopicConfig,
    TopicInfo,
    TopicPartition,
)
from .transaction import Transaction

__version__ = "0.1.0"

__all__ = (
    # clients
    "Admin",
    # errors
    "AmbiguousWriteError",
    "ClientPoolExhaustedError",
    # failure handling
    "Backoff",
    "BatchError",
    "ConfigError",
    "Consumer",
    "ConsumerStoppedError",
    "DeadLetter",
    "DecodeError",
    # partitioning and serialization
    "Deserializer",
    "FencedError",
    "GroupError",
    "IllegalStateError",
    "InFlightMessage",
    # values
    "DeadLetterRecord",
    "GroupInfo",
    "InvalidPartitionsError",
    "MemberInfo",
    "Message",
    "MessageTooLargeError",
    "NotEnoughReplicasError",
    "Output",
    "PartitionGroupInfo",
    "PartitionInfo",
    "Producer",
    "ProducerClosedError",
    "Record",
    "RecordMetadata",
    "RedcurrentConnectionError",
    "RedcurrentError",
    "RequeueError",
    "Retry",
    "RetryPolicy",
    "run_consumer",
    "SerializationError",
    "Serializer",
    "ShareConsumer",
    "ShareGroupInfo",
    "ShareMemberInfo",
    "StickyPartitioner",
    "TopicConfig",
    "TopicError",
    "TopicExistsError",
    "Transaction",
    "TransactionError",
    "TopicInfo",
    "TopicPartition",
    "UnknownGroupError",
    "UnknownTopicError",
    "__version__",
    "id_key",
    "murmur3_32",
    "next_id",
    "partition_for_key",
)
