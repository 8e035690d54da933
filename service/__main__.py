"""Command line: `chat-service serve` and `chat-service token --sub NAME [--ttl SECONDS]`."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Sequence

from . import __version__
from .config import ConfigError, Settings, load_settings
from .config import warnings as config_warnings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-service", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the service under gunicorn with uvicorn workers")
    token = commands.add_parser("token", help="print a signed token for the configured key")
    token.add_argument("--sub", required=True, help="the user the token stands for")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve()
    return print_token(args.sub, args.ttl)


def serve() -> int:
    # Before anything imports prometheus_client: it picks its storage at import time.
    made_metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made_metrics_dir = tempfile.mkdtemp(prefix="chat-service-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made_metrics_dir
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    try:
        return _serve()
    finally:
        if made_metrics_dir is not None:
            shutil.rmtree(made_metrics_dir, ignore_errors=True)


def _serve() -> int:
    from .observability.logging import configure_logging, get_logger

    configure_logging(
        os.environ.get("CHAT_LOG_LEVEL", "info").lower(),
        os.environ.get("CHAT_LOG_FORMAT", "json").lower(),
    )
    log = get_logger("service.serve")
    try:
        settings = load_settings()
    except ConfigError as exc:
        log.critical("invalid configuration; not starting", error=str(exc))
        return 2
    configure_logging(settings.log_level, settings.log_format)
    for warning in config_warnings(settings):
        log.warning(warning)
    if not settings.has_key:
        settings = _development_key(settings, log)
    if not settings.redis_url:
        log.info("no CHAT_REDIS_URL: limits, cache and conversations are kept per worker")

    from .server import ChatApplication

    # The app is imported in each worker after the fork, never in the arbiter: prometheus
    # client state made before a fork is reset in the child, and the arbiter needs none of it.
    ChatApplication(settings).run()
    return 0


def _development_key(settings: Settings, log: object) -> Settings:
    """One random secret for every worker (they inherit the environment), and a token to try."""
    from .auth import issue_token

    secret = secrets.token_urlsafe(32)
    os.environ["CHAT_JWT_SECRET"] = secret
    settings = settings.model_copy(update={"jwt_secret": secret})
    token = issue_token(settings, sub="developer", ttl=24 * 3600)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    log.warning(  # type: ignore[attr-defined]
        "development mode: random signing key for this run; try the token below",
        token=token,
        url=f"http://{host}:{settings.port}/#token={token}",
        curl=f"curl -N -H 'Authorization: Bearer {token}' http://{host}:{settings.port}/chat/hello",
    )
    return settings


def print_token(sub: str, ttl: int) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"chat-service token: {exc}", file=sys.stderr)
        return 2
    from .auth import issue_token

    try:
        print(issue_token(settings, sub=sub, ttl=ttl))
    except ValueError as exc:
        print(f"chat-service token: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
