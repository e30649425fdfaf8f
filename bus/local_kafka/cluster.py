"""A replicated Kafka cluster on 127.0.0.1: three (or more) KRaft nodes, each broker and
controller, for proving what a replicated topic keeps when one node dies.

Every node is a `LocalKafka` of its own (own ports, own state directory under `state_dir`),
all formatted with one cluster id and listing each other as the controller quorum. Topics are
made with three replicas and need two in sync to take an `acks=all` write, so losing any one
node loses no acknowledged record and stops no producer.

```python
cluster = LocalKafkaCluster.on_free_ports(Path(".bus/cluster"), distribution)
await cluster.start()
cluster.kill(2)                # SIGKILL node 2, as a crash would
await cluster.restart(2)       # same ports, same data: it catches up and rejoins
cluster.stop()
```
"""

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import psutil

from bus.errors import BrokerNotRunningError, BrokerStartError
from bus.local_kafka.broker import LocalKafka, new_cluster_id
from bus.local_kafka.distribution import KafkaDistribution
from bus.processes import free_ports

NODES = 3


def replicated_properties(
    node_id: int, voters: str, replicas: int, min_in_sync: int
) -> dict[str, str]:
    """What a node of the cluster sets on top of the single-node defaults: its id, the quorum,
    and every replication factor (user and internal topics) at `replicas`."""
    return {
        "node.id": str(node_id),
        "controller.quorum.voters": voters,
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_in_sync),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_in_sync),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_in_sync),
    }


@dataclass
class LocalKafkaCluster:
    """`nodes[i]` is node id i + 1; `bootstrap_servers` names them all."""

    nodes: list[LocalKafka]
    cluster_id: str
    notes: list[str] = field(default_factory=list)

    @classmethod
    def on_free_ports(
        cls,
        state_dir: Path,
        distribution: KafkaDistribution,
        *,
        size: int = NODES,
        min_in_sync: int = 2,
        overrides: Mapping[str, str] | None = None,
        heap: str = "512m",
        die_with_parent: bool = False,
    ) -> Self:
        """A cluster of `size` nodes on ports free now, state in `state_dir/node-<id>`."""
        if not 1 <= min_in_sync <= size:
            raise BrokerStartError(
                f"min_in_sync={min_in_sync} cannot be met by a cluster of {size} nodes; "
                f"choose 1 to {size}"
            )
        ports = free_ports(2 * size)
        client_ports, controller_ports = ports[:size], ports[size:]
        voters = ",".join(
            f"{index + 1}@127.0.0.1:{port}" for index, port in enumerate(controller_ports)
        )
        cluster_id = new_cluster_id()
        nodes = [
            LocalKafka(
                state_dir=state_dir / f"node-{index + 1}",
                distribution=distribution,
                client_port=client_ports[index],
                controller_port=controller_ports[index],
                overrides={
                    **(overrides or {}),
                    **replicated_properties(index + 1, voters, size, min_in_sync),
                },
                heap=heap,
                die_with_parent=die_with_parent,
                cluster_id=cluster_id,
            )
            for index in range(size)
        ]
        return cls(nodes=nodes, cluster_id=cluster_id)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        if not 1 <= node_id <= len(self.nodes):
            raise BrokerNotRunningError(
                f"the cluster has nodes 1 to {len(self.nodes)}, not node {node_id}"
            )
        return self.nodes[node_id - 1]

    async def start(self, ready_within: float = 120.0) -> None:
        """Start every node at once and return when each answers: a node answers metadata only
        once the controller quorum has formed, which needs a majority of them running."""
        started = await asyncio.gather(
            *(node.start(ready_within=ready_within) for node in self.nodes),
            return_exceptions=True,
        )
        failures = [result for result in started if isinstance(result, BaseException)]
        if failures:
            self.stop()
            raise BrokerStartError(
                "the cluster did not start: "
                + "; ".join(f"node {index + 1}: {result}" for index, result in _failed(started))
            ) from failures[0]

    def kill(self, node_id: int) -> int:
        """SIGKILL node `node_id`'s process group, as a crash or a pulled plug would: no
        controlled shutdown, no leadership handed over. Returns the pid it killed."""
        node = self.node(node_id)
        pid = node.status().pid
        if pid is None:
            raise BrokerNotRunningError(f"node {node_id} of the cluster does not run")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        # Reap it (it is our child), so that its pid is not mistaken for a live broker.
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            psutil.Process(pid).wait(timeout=10)
        node.pid_file.unlink(missing_ok=True)
        return pid

    async def restart(self, node_id: int, ready_within: float = 120.0) -> None:
        """Start node `node_id` again on its ports and data: it recovers its log, fetches what
        it missed from the leaders and rejoins the in-sync replicas."""
        await self.node(node_id).start(ready_within=ready_within)

    def running(self) -> list[int]:
        return [index + 1 for index, node in enumerate(self.nodes) if node.status().running]

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every running node (a clean shutdown each, SIGKILL after `timeout`), all at
        once: one after another, the last would wait out `timeout` for a quorum that is gone."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            for node in self.nodes:
                pool.submit(_stop_quietly, node, timeout)


def _stop_quietly(node: LocalKafka, timeout: float) -> None:
    with contextlib.suppress(BrokerNotRunningError):
        node.stop(timeout=timeout)


def _failed(results: Sequence[object]) -> list[tuple[int, BaseException]]:
    return [(index, r) for index, r in enumerate(results) if isinstance(r, BaseException)]
