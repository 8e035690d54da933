"""Redis: the service's one client per worker (store.py: the rule for when Redis counts as
down, and every command batched per loop turn through pipeline.py), the topology it speaks
to (standalone.py, sentinel.py, cluster.py, chosen once here from CHAT_REDIS_URL: urls.py),
every key name (keys.py), and the relay that makes a generation reachable from any worker
(relay.py).
"""

from __future__ import annotations

from types import ModuleType

from . import cluster, sentinel, standalone
from .topology import Connected, Tuning
from .urls import parse_url

TOPOLOGIES: dict[str, ModuleType] = {
    "single": standalone,
    "sentinel": sentinel,
    "cluster": cluster,
}


def connect(url: str, ca_file: str | None, tuning: Tuning) -> tuple[str, Connected]:
    """The topology `url` names, connected: its mode, and its pool, pipelines and probe."""
    target = parse_url(url)
    connected: Connected = TOPOLOGIES[target.mode].connect(target, ca_file, tuning)
    return target.mode, connected
