"""A Redis Cluster (`redis+cluster://`): commands batched per node, each sent to the node
serving its key's slot (hash tags keep what one script touches in one slot: redis/keys.py),
a `MOVED` reply answered by reading the slot map again and sending the command where it now
belongs, so no redirection reaches a request; a lost node makes the map be read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError, MovedError, ResponseError

from .pipeline import AutoPipeline
from .topology import Connected, OnStall, Tuning, probe_settings
from .urls import RedisTarget

# Commands whose key is not their first argument.
SCRIPTS = frozenset({b"EVALSHA", b"EVAL"})
MAX_REDIRECTS = 3


def connect(target: RedisTarget, ca_file: str | None, tuning: Tuning) -> Connected:
    settings = {k: v for k, v in tuning.settings.items() if k != "timeout"}
    settings.update(password=target.password, username=target.username)
    # The first node's pool: only `limits` asks it for anything, and nothing but its keys'
    # names.
    host, port = target.hosts[0]
    pool = aioredis.ConnectionPool(host=host, port=port, **settings)
    pipeline = ClusterPipelines(
        target, settings, tuning.connections, tuning.give_up, tuning.stall_after, tuning.on_stall
    )
    auth: dict[str, Any] = {"password": target.password, "username": target.username}
    probe = _AnyNode(target.hosts, auth, probe_settings(tuning.stall_after))
    return Connected(pool, pipeline, probe)


class _AnyNode:
    def __init__(self, hosts: Sequence[tuple[str, int]], auth: dict[str, Any], common: Any):
        self.clients = [redis.Redis(host=h, port=p, **auth, **common) for h, p in hosts]

    def ping(self) -> bool:
        for client in self.clients:
            with contextlib.suppress(redis.RedisError, OSError):
                if client.ping():
                    return True
        return False

    def close(self) -> None:
        for client in self.clients:
            client.close()


def command_key(command: Sequence[Any]) -> bytes | None:
    """The key a command is routed by (the first it names), or None for keyless ones."""
    name = command[0].upper() if isinstance(command[0], bytes) else str(command[0]).upper()
    if (name.encode() if isinstance(name, str) else name) in SCRIPTS:
        return _bytes(command[3]) if int(command[2]) > 0 else None
    return _bytes(command[1]) if len(command) > 1 else None


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass(slots=True)
class _Routed:
    """A command on its way to the node that serves its slot."""

    outer: asyncio.Future[Any]
    command: tuple[Any, ...]
    urgent: bool
    redirects: int = 0


class ClusterPipelines:
    """Commands batched per Cluster node, each sent to the node serving its key's slot."""

    def __init__(
        self,
        target: RedisTarget,
        settings: dict[str, Any],
        max_connections: int,
        timeout: float,
        stall_after: float,
        on_stall: OnStall,
    ) -> None:
        self.target = target
        self.settings = {k: v for k, v in settings.items() if k not in ("timeout",)}
        self.settings.update(password=target.password, username=target.username)
        self.max_connections = max_connections
        self.timeout = timeout
        self.stall_after = stall_after
        self.on_stall = on_stall
        self._nodes: dict[tuple[str, int], AutoPipeline] = {}
        self._slots: list[tuple[str, int] | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._known: list[tuple[str, int]] = list(target.hosts)
        self._mapping: asyncio.Task[None] | None = None
        self._closed = False

    def _node(self, address: tuple[str, int]) -> AutoPipeline:
        pipeline = self._nodes.get(address)
        if pipeline is None:
            host, port = address
            pool = aioredis.ConnectionPool(host=host, port=port, **self.settings)
            pipeline = self._nodes[address] = AutoPipeline(
                pool,
                self.max_connections,
                self.timeout,
                stall_after=self.stall_after,
                on_stall=self.on_stall,
            )
        return pipeline

    def execute(self, *command: Any, urgent: bool = True) -> asyncio.Future[Any]:
        if self._closed:
            raise ConnectionError("the Redis pipelines are closed")
        routed = _Routed(asyncio.get_running_loop().create_future(), command, urgent)
        key = command_key(command)
        slot = key_slot(key) if key is not None else None
        address = self._known[0] if slot is None else self._slots[slot]
        if address is None:  # no map yet (or a hole in it): read it, then send
            waiting = asyncio.ensure_future(self._send_when_mapped(routed, slot))
            waiting.add_done_callback(_consume)
        else:
            self._forward(routed, address)
        return routed.outer

    async def _send_when_mapped(self, routed: _Routed, slot: int | None) -> None:
        try:
            address = await self._address(slot)
        except Exception as exc:
            _fail(routed.outer, exc)
            return
        self._forward(routed, address)

    def _forward(self, routed: _Routed, address: tuple[str, int]) -> None:
        outer = routed.outer
        if outer.done():
            return  # its caller gave up
        try:
            inner = self._node(address).execute(*routed.command, urgent=routed.urgent)
        except Exception as exc:
            _fail(outer, exc)
            return
        inner.add_done_callback(lambda done: self._answered(routed, done))
        outer.add_done_callback(lambda mine: inner.cancel() if mine.cancelled() else None)

    def _answered(self, routed: _Routed, inner: asyncio.Future[Any]) -> None:
        outer = routed.outer
        if outer.done():
            return
        if inner.cancelled():
            outer.cancel()
            return
        exc = inner.exception()
        if exc is None:
            outer.set_result(inner.result())
            return
        moved = _moved(exc) if isinstance(exc, ResponseError) else None
        if moved is not None and routed.redirects < MAX_REDIRECTS:
            slot, address = moved
            self._slots[slot] = address
            self._remap()  # the rest of the map has probably changed too
            routed.redirects += 1
            self._forward(routed, address)
            return
        if isinstance(exc, ConnectionError):
            self._remap()  # a node lost: the map may have moved on
        outer.set_exception(exc)

    async def _address(self, slot: int | None) -> tuple[str, int]:
        if slot is None:
            return self._known[0]
        address = self._slots[slot]
        if address is None:
            if self._mapping is None or self._mapping.done():
                self._mapping = asyncio.ensure_future(self._read_map())
            await asyncio.shield(self._mapping)
            address = self._slots[slot]
            if address is None:
                raise ConnectionError(f"no Cluster node serves slot {slot}")
        return address

    def _remap(self) -> None:
        if self._mapping is None or self._mapping.done():
            self._mapping = asyncio.ensure_future(self._read_map())
            self._mapping.add_done_callback(_consume)

    async def _read_map(self) -> None:
        """CLUSTER SLOTS from the first known node that answers."""
        candidates = list(dict.fromkeys([*self._known, *self.target.hosts]))
        random.shuffle(candidates)
        failure: BaseException | None = None
        for address in candidates:
            try:
                rows = await self._node(address).execute("CLUSTER", "SLOTS")
            except (ConnectionError, ResponseError, OSError) as exc:
                failure = exc
                continue
            slots: list[tuple[str, int] | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
            known = []
            for row in rows:
                start, end, primary = int(row[0]), int(row[1]), row[2]
                host = primary[0].decode() if isinstance(primary[0], bytes) else primary[0]
                node = (host or address[0], int(primary[1]))
                known.append(node)
                for slot in range(start, end + 1):
                    slots[slot] = node
            self._slots = slots
            self._known = list(dict.fromkeys(known)) or self._known
            return
        raise ConnectionError(f"no Cluster node answered: {type(failure).__name__}")

    def abandon(self) -> None:
        for pipeline in self._nodes.values():
            pipeline.abandon()

    async def aclose(self) -> None:
        self._closed = True
        for pipeline in list(self._nodes.values()):
            await pipeline.aclose()
            await pipeline.pool.disconnect()


def _moved(exc: ResponseError) -> tuple[int, tuple[str, int]] | None:
    """`MOVED 3999 127.0.0.1:6381`: the slot, and the node that serves it now. (ASK, a
    slot being moved by an operator at this moment, fails like any error reply.)"""
    if not isinstance(exc, MovedError):
        return None
    return int(exc.slot_id), (str(exc.host), int(exc.port))


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))


def _consume(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # read, so a failed refresh is not reported as never retrieved
