"""chat-service: streams AI chat replies over Server-Sent Events.

One `POST /chat`, from the socket to the first byte (Redis on, no conversation); each
step is the module named, and the arrows are the hops a newcomer follows:

    connections.py          the socket: head and body deadlines, connection bounds
    observability/middleware.py   request id, Server-Timing; the access line at the end
    body_limit.py           413 past CHAT_MAX_BODY_BYTES (cors.py too, with origins set)
 -> routes/chat.py          the body, parsed and checked (422)
 -> deps.py -> auth.py      the bearer token verified: the user (401)
 -> chat.py                 Chat.respond: the request's way through the rest
 -> admission/              every gate takes at once, one Redis round trip
                            (redis/store.py, redis/pipeline.py): rate.py, slots.py,
                            budget.py (with a budget), ticket.py (the cache); 429
 -> cache/__init__.py       the source: the stored reply, an identical request's, or
                            backends/ (demo.py, openai.py)
 -> generations.py, generation.py   a task runs the source; each event encoded once
                            (events.py) into the log (log.py)
 -> response.py            EventStream: the first byte; then every entry of the log
                            as it comes (while the stream waits for them, written at the
                            end of the loop's turn without waking it: writes.py), pinged
                            while idle

The end, in one place: when the generation ends, chat.ChatFinisher hands back what
admission took, in reverse order (the cache ticket stores a reply that ended by itself,
the budget settles to what was used, the slot is released); redis/relay.py publishes the
log for any worker to resume from, through generations.Elsewhere (its twin without Redis,
`Local`, does nothing).

Deliberate deviations from how the libraries underneath are meant to be used, each kept
because it was measured to matter (figures from `python -m bench` and profiles of a worker
under load on the 2-core VM the README's benchmark describes):

- `raw_send` (observability/middleware.py, response.py): event streams write body chunks to
  uvicorn's own `send`, past the four pass-through wrappers of the middleware stack (which
  only ever look at `http.response.start`). Per event the service then costs less worker
  CPU than a Starlette `StreamingResponse` (7.4 against 8.6 µs).
- `writes.py`: what a generation appends while its reader waits for it is written to that
  reader's socket at the end of the loop's turn, in one write, through uvicorn's request
  cycle (its chunk framing, flow control and state, read directly), instead of waking the
  reader's task to `send` it; the reader wakes for the end, or when the socket cannot take
  the entries at once. Paced streams (900 on one worker, 30 events a second each, no
  Redis): worker CPU from 0.67 to 0.50 of a core, p99 gap between events from 57 to 42 ms.
  (Written at once, an event at a time, a reply made in one go took a write an event: 0.58x
  Starlette's events/s at concurrency 10. At the end of the turn it is 1.15x.)
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
- Redis (redis/pipeline.py) uses redis-py's connection objects directly, below its pool and
  client: packed commands written together, replies read in order, the stream reader
  inspected for a connection the server closed. One loop turn's commands then cost one
  round trip: worker CPU per stream at concurrency 1 went from 1,591 to 1,129 µs. `limits`'
  Redis storage is subclassed (admission/rate.py) so its increment and expiry ride those
  batches.
- `EventStream` (response.py) is a Starlette `Response` that sets its headers itself and runs
  its own ASGI call, as a pure ASGI response, rather than a `StreamingResponse` with a task
  group per stream. Within the app it sends only its head; its body is run by the
  outermost middleware (`RequestContext`, through `record.body`) after FastAPI's call has
  returned, so that FastAPI's and Starlette's frames for the request (middleware, router,
  the dependencies' exit stacks, the request object) are not held for the stream's whole
  life: the Python memory of an idle stream went from 23.2 to 5.5 KiB (tracemalloc, 500
  streams in one process). What FastAPI sees is a response that ended at its head.
"""

__version__ = "0.1.0"
