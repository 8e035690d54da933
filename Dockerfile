# syntax=docker/dockerfile:1
#
# chat-service image: gunicorn with uvicorn workers, run as `chat-service serve`.
#
#   docker build -t chat-service .
#   docker run --rm -p 8000:8000 -e CHAT_JWT_SECRET=... chat-service
#
# Two stages: `build` turns the project and every dependency into wheels (it has the
# compilers, in case a dependency ships no wheel for this platform); `runtime` installs
# those wheels into a slim image that has no compilers and runs as a fixed non-root UID.
# Every path the process writes (metrics, temp files, HOME) is under /tmp, so the
# container runs with a read-only root filesystem and a tmpfs or emptyDir on /tmp.

# One Python for both stages: wheels built in `build` must fit the runtime's interpreter
# and glibc, and both images below are Debian bookworm.
ARG PYTHON_VERSION=3.11

# Build stage: the full python image brings gcc and headers without an apt-get step.
FROM python:${PYTHON_VERSION}-bookworm AS build

# Build in a directory of our own, not in the image's root.
WORKDIR /src

# Only the lock file first, so the dependency wheels below stay cached until it changes;
# editing the code does not rebuild them.
COPY requirements/runtime.lock ./

# Dependency wheels: exactly the locked versions, every file checked against its hash
# (scripts/lock.sh makes the lock from pyproject.toml). Nothing is resolved afresh.
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels/deps --requirement runtime.lock \
    && cp runtime.lock /wheels/deps/runtime.lock

# Then the code. pyproject.toml names the README as the package description.
COPY pyproject.toml README.md ./

# The package itself.
COPY service ./service

# The page, which the wheel carries as `service.static` (see pyproject.toml).
COPY static ./static

# The project's own wheel, kept apart from the dependencies so the runtime stage installs
# it in a layer of its own.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels/app .

# Runtime stage: slim, no compilers, nothing from the build stage but wheels.
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

# The release version, passed by .github/workflows/release.yml; the default marks a
# local build.
ARG VERSION=0.0.0-dev

# The commit the image was built from.
ARG REVISION=unknown

# The build time (RFC 3339), from the same workflow.
ARG CREATED=unknown

# OCI image annotations (https://github.com/opencontainers/image-spec/blob/main/annotations.md).
LABEL org.opencontainers.image.title="chat-service" \
      org.opencontainers.image.description="Streams AI chat replies over Server-Sent Events, behind JWT auth, under gunicorn." \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

# Every writable path lives under /tmp so a read-only root filesystem works: HOME and
# TMPDIR for libraries that write there; `serve` makes the workers' metrics directory
# (PROMETHEUS_MULTIPROC_DIR) in TMPDIR when it is not set, fresh at every start. No .pyc
# is written at run time (pip compiled them at install); logs go straight to stdout. The
# metrics port is on by default so /metrics never shares the public port in a container.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    CHAT_HOST=0.0.0.0 \
    CHAT_PORT=8000 \
    CHAT_METRICS_PORT=9090

# A fixed numeric UID/GID (10001, outside the range distributions hand out), so that
# Kubernetes' runAsNonRoot can verify it and volume permissions are predictable.
RUN groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin chat

# Dependencies first, from the build stage's wheels through a bind mount (the wheels
# themselves never become a layer); offline and hash-checked against the lock again.
RUN --mount=type=bind,from=build,source=/wheels/deps,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels --require-hashes \
        --requirement /wheels/runtime.lock

# Then the project itself: a code change rebuilds only this small layer.
RUN --mount=type=bind,from=build,source=/wheels/app,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/chat_service-*.whl

# Run as the fixed non-root user, by number so no passwd lookup is needed to verify it.
USER 10001:10001

# /tmp is the only writable place and a harmless working directory.
WORKDIR /tmp

# 8000: HTTP (chat, page, health); 9090: Prometheus /metrics and the probes
# (CHAT_METRICS_PORT).
EXPOSE 8000 9090

# Liveness for plain Docker and compose (Kubernetes uses the chart's probes instead), on
# the metrics port when there is one: its connections count apart, so clients filling the
# HTTP port never fail it. Python's urllib, because the slim image has no curl; urlopen
# raises on any non-2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('CHAT_METRICS_PORT') or os.environ.get('CHAT_PORT', '8000')), timeout=4)"]

# gunicorn is PID 1: SIGTERM from `docker stop` or the kubelet reaches it directly and
# starts the graceful drain (exec form, no shell in between).
CMD ["chat-service", "serve"]
