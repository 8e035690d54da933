"""chat-service: streams AI chat replies over Server-Sent Events.

Deliberate deviations from how the libraries underneath are meant to be used, each kept
because it was measured to matter (figures from `python -m bench` and profiles of a worker
under load on the 2-core VM the README's benchmark describes):

- `raw_send` (observability/middleware.py, sse.py): event streams write body chunks to
  uvicorn's own `send`, past the four pass-through wrappers of the middleware stack (which
  only ever look at `http.response.start`). Per event the service then costs less worker
  CPU than a Starlette `StreamingResponse` (7.4 against 8.6 µs).
- `gc.freeze()` after start-up (app.py): full collections stop walking the app's modules,
  routes and resources: 7% less CPU per stream, and p99 first byte at concurrency 100
  from 177 to about 125 ms.
- prometheus-client's value class (observability/metrics.py) is built with a fixed process
  id instead of asking `getpid()` on every update: that was 6% of a worker's time.
- The access line (observability/logging.py) skips the stdlib `logging` machinery: a tenth
  of a worker's time under load.
- FastAPI's own OpenTelemetry hooks are off (app.py): an environment look-up on every
  request, 3% of a worker.
- The worker (server.py) overrides uvicorn-worker's private `_serve` to run a uvicorn
  `Server` subclass that starts the drain on SIGTERM, and installs uvicorn's HTTP protocol
  subclassed (connections.py, from uvicorn's internal `httptools_impl`) for the head and
  body deadlines, the keep-alive deadline a trickle cannot move, head size and the
  connection bounds uvicorn lacks. It switches off the request cycle's `keep_alive` while a
  body is outstanding, so that uvicorn itself closes a connection whose answer came before
  its body, and replaces uvicorn's keep-alive timer (which any byte cancels) with its own.
  Its state lives in slots, since five more instance attributes cost every connection
  1 KiB (CPython shares instance dict keys only up to 30).
- Redis (pipelining.py) uses redis-py's connection objects directly, below its pool and
  client: packed commands written together, replies read in order, the stream reader
  inspected for a connection the server closed. One loop turn's commands then cost one
  round trip: worker CPU per stream at concurrency 1 went from 1,591 to 1,129 µs. `limits`'
  Redis storage is subclassed (limits.py) so its increment and expiry ride those batches.
- `EventStream` (sse.py) is a Starlette `Response` that sets its headers itself and runs
  its own ASGI call, as a pure ASGI response, rather than a `StreamingResponse` with a task
  group per stream.
"""

__version__ = "0.1.0"
