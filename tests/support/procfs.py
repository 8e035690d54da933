"""What the kernel knows about the service's processes, read from /proc (Linux only).

Fault tests use it to see which worker holds which client connection (the client's port is
the peer port of one of the worker's TCP sockets) and how much memory the workers hold.
"""

from __future__ import annotations

import os
from pathlib import Path

# /proc/net/tcp state column; everything but LISTEN is a connection.
TCP_LISTEN = "0A"


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no VmRSS for pid {pid}")


def total_rss_bytes(pids: set[int]) -> int:
    return sum(rss_bytes(pid) for pid in pids)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except FileNotFoundError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def peer_ports(pid: int, local_port: int) -> set[int]:
    """Client ports of the TCP connections to `local_port` that process `pid` holds open."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if inode not in inodes or state == TCP_LISTEN:
                continue
            if int(local.rsplit(":", 1)[1], 16) == local_port:
                ports.add(int(remote.rsplit(":", 1)[1], 16))
    return ports
