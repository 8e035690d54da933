"""gunicorn as the process manager, uvicorn workers inside it.

- `Worker` passes uvicorn the settings long streams need and hooks SIGTERM: uvicorn's own
  handler stops accepting and waits, and ours additionally starts the app's `Drain`.
- `GunicornLogger` sends gunicorn's lines through the same JSON handler as everything else.
- Hooks keep multiprocess metrics right: the directory is wiped when the arbiter starts and a
  dead worker's live gauges are dropped.
No `max_requests`: recycling a worker cannot drain a stream that lasts minutes.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import uvicorn
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger
from uvicorn_worker import UvicornWorker

from .config import Settings, load_settings
from .shutdown import notify_shutdown

# Time between the drain ending open streams and gunicorn killing the worker: enough to
# write the `shutdown` events and run the lifespan shutdown.
KILL_MARGIN_SECONDS = 5


class _DrainingServer(uvicorn.Server):
    def handle_exit(self, sig: int, frame: Any) -> None:
        notify_shutdown()
        super().handle_exit(sig, frame)


class Worker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": "auto",
        "server_header": False,
        "proxy_headers": True,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A backstop behind the Drain: uvicorn cancels whatever is left just before gunicorn
        # would SIGKILL the worker.
        self.config.timeout_graceful_shutdown = max(1, self.cfg.graceful_timeout - 2)

    def _guard_connections(self) -> None:
        # Here, after the fork: the protocol counts refusals in prometheus_client, which
        # must never be imported in the arbiter (its files are named by the importing pid).
        from . import connections

        # `serve` validated the settings before gunicorn started; the worker reads the same.
        settings = load_settings()
        bounds = connections.Bounds.trusting(
            settings.trusted_proxies,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
            max_per_address=settings.max_connections_per_address,
            metrics_port=settings.metrics_port,
        )
        allowed = connections.configure(bounds)
        if allowed < settings.max_connections:
            logging.getLogger("service.server").warning(
                "CHAT_MAX_CONNECTIONS lowered to fit the open-file limit",
                extra={"requested": settings.max_connections, "allowed": allowed},
            )
        self.config.http = connections.GuardedProtocol

    async def _serve(self) -> None:
        self._guard_connections()
        self.config.app = self.wsgi
        server = _DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


class GunicornLogger(Logger):  # type: ignore[misc]
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        # The root handler was configured by `serve` before gunicorn started.
        handlers = logging.getLogger().handlers
        self.error_log.handlers = list(handlers)
        self.error_log.propagate = False
        # uvicorn workers copy these to `uvicorn.access`, which we keep quiet: our access line
        # is written when a response ends.
        self.access_log.handlers = []
        self.access_log.propagate = False


def _wipe_metrics(arbiter: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for path in Path(directory).glob("*.db"):
            path.unlink(missing_ok=True)


def _cut_stalled_connections(send_timeout: float) -> Callable[[Any], None]:
    """A client that stops reading fills the socket buffer; the stream then stops at
    CHAT_SSE_SEND_TIMEOUT, but uvicorn's close waits for that buffer to drain, which it never
    does, so the connection would stay open for good. TCP_USER_TIMEOUT (RFC 5482; Linux
    applies it to zero-window probes too) lets the kernel drop a connection whose data has
    gone unacknowledged that long. Accepted sockets inherit it from the listener."""

    def when_ready(arbiter: Any) -> None:
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if option is None:  # not Linux
            return
        for listener in arbiter.LISTENERS:
            sock = listener.sock
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, option, int(send_timeout * 1000))

    return when_ready


def _worker_exited(arbiter: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class ChatApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        binds = [f"{settings.host}:{settings.port}"]
        if settings.metrics_port:
            binds.append(f"{settings.host}:{settings.metrics_port}")
        options: dict[str, Any] = {
            "bind": binds,
            # Without Redis every piece of state (limits, cache, history, resume) is per
            # worker: one worker keeps them exact.
            "workers": settings.workers or (default_workers() if settings.redis_url else 1),
            "worker_class": "service.server.Worker",
            "logger_class": "service.server.GunicornLogger",
            "graceful_timeout": int(settings.graceful_timeout) + KILL_MARGIN_SECONDS,
            "timeout": 30,  # heartbeat of the worker's event loop, not a request limit
            "keepalive": 5,
            "max_requests": 0,
            "forwarded_allow_ips": ",".join(settings.trusted_proxies),
            "proc_name": "chat-service",
            "accesslog": None,
            "loglevel": settings.log_level,
            "on_starting": _wipe_metrics,
            "child_exit": _worker_exited,
            "when_ready": _cut_stalled_connections(settings.sse_send_timeout),
            # Memory-backed heartbeat files: a read-only root filesystem only has /tmp.
            # gunicorn 24+ opens a control socket under $HOME; nothing here uses it, and a
            # read-only root filesystem has no writable $HOME.
            "control_socket_disable": True,
            "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,  # noqa: S108
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from .app import create_app

        return create_app()


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
