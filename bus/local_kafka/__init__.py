"""The local development broker: a pinned Apache Kafka from Maven Central, run on 127.0.0.1."""

from bus.local_kafka.broker import (
    BrokerStatus,
    LocalKafka,
    SecureListener,
    secure_listener_properties,
    single_node_properties,
)
from bus.local_kafka.cluster import LocalKafkaCluster
from bus.local_kafka.distribution import KafkaDistribution
from bus.local_kafka.embedded import bootstrap_servers_for, local_kafka_from

__all__ = [
    "BrokerStatus",
    "KafkaDistribution",
    "LocalKafka",
    "LocalKafkaCluster",
    "SecureListener",
    "bootstrap_servers_for",
    "local_kafka_from",
    "secure_listener_properties",
    "single_node_properties",
]
