"""What a chat generation streams, and what happens around its end.

Sources (each an async iterator of events, run by a Generation):
- `fresh`: the backend's reply, opened by the route;
- `replayed`: a cached reply, at once;
- `followed`: an identical request is generating elsewhere; wait for it and replay what it
  stored, or, if it failed, generate here after all.

`ChatFinisher` counts the generation's tokens (the upstream's `usage`, or an estimate from
the text, tokens.py) and puts them on `done`, keeps the turn in its conversation before
`done` goes out (so a client's next turn sees it), stores a reply that ended by itself in
the cache, and settles the token reservation and hands back what the request's admission
took, however the generation ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import cast

import orjson
from starlette.types import Receive

from .admission import Admission
from .backends import NATURAL_ENDS, Backend, BackendError, ChatRequest, Turn
from .cache import blob_of
from .conversations import Conversations, HistoryUnavailable, NotFound, Opened
from .errors import ClientGone, NotFoundError, Unavailable, UpstreamFailed
from .events import Event
from .generation import Generation
from .observability import metrics
from .observability.logging import get_logger
from .state import Services
from .tokens import NOTHING, TOKENS_PER_MESSAGE, Usage, estimate, estimate_prompt

log = get_logger("service.chat")

NOT_KEPT = Event(
    "error",
    {"code": "history_unavailable", "message": "the reply could not be saved; send it again"},
)


async def replayed(events: list[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event


async def followed(
    open_backend: Callable[[], Awaitable[AsyncIterator[Event]]],
    wait: Callable[[], Awaitable[list[Event] | None]],
    finisher: ChatFinisher,
) -> AsyncIterator[Event]:
    """An identical request is generating elsewhere: wait for it (pings keep this stream
    alive meanwhile) and replay what it stored; if it failed, generate here after all."""
    stored = await wait()
    if stored is not None:
        finisher.replayed = True  # what it stored is stored already
        for event in stored:
            yield event
        return
    try:
        upstream = cast(AsyncGenerator[Event, None], await open_backend())
    except UpstreamFailed as exc:
        yield Event("error", {"code": exc.code, "message": exc.detail})
        return
    async with aclosing(upstream):
        async for event in upstream:
            yield event


async def open_backend(backend: Backend, chat: ChatRequest) -> AsyncIterator[Event]:
    metrics.backend_streams.labels(backend.name).inc()
    try:
        return await backend.open(chat)
    except BackendError as exc:
        metrics.backend_errors.labels(exc.code).inc()
        raise UpstreamFailed(exc.status, exc.code, exc.message) from None


async def open_unless_gone(
    receive: Receive, backend: Backend, chat: ChatRequest
) -> AsyncIterator[Event]:
    """Open the backend, unless the client leaves first: an upstream that is slow to answer
    (retries included) would otherwise run on for nobody, holding the user's stream slot."""
    if not backend.opens_upstream:
        return await open_backend(backend, chat)
    opening = asyncio.ensure_future(open_backend(backend, chat))
    leaving = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({opening, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
    if opening.done():
        return opening.result()
    opening.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await opening
    raise ClientGone("the client closed the request")


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def source_for(
    receive: Receive, services: Services, admission: Admission, finisher: ChatFinisher
) -> AsyncIterator[Event]:
    """What the generation streams: the cached reply, an identical request's, or the
    backend's, opened here (so a refusal is still a JSON error with its status)."""
    ticket, backend = admission.ticket, services.backend
    history = finisher.conversation[1].history if finisher.conversation else ()
    chat = ChatRequest(message=finisher.message, history=history)
    if ticket.events is not None:
        return replayed(ticket.events)
    if ticket.single_flight and not ticket.leading:
        key = ticket.key
        assert key is not None
        return followed(
            lambda: open_backend(backend, chat), lambda: services.cache.wait(key), finisher
        )
    return await open_unless_gone(receive, backend, chat)


class ChatFinisher:
    __slots__ = (
        "admission",
        "conversation",
        "conversations",
        "message",
        "prompt_tokens",
        "replayed",
        "user",
    )

    def __init__(
        self, admission: Admission, conversations: Conversations, user: str, message: str
    ) -> None:
        self.admission = admission
        self.conversations = conversations
        self.user = user
        self.message = message
        self.conversation: tuple[str, Opened] | None = None
        self.replayed = admission.ticket.mode == "HIT"  # nothing new to store or count
        self.prompt_tokens = estimate_prompt((message,))  # history adds to it

    async def open_conversation(self, conversation_id: str) -> None:
        """Read its history (creating it if new): 404 for another user's, 503 when the
        store is away."""
        try:
            opened = await self.conversations.open(self.user, conversation_id, self.message)
        except NotFound:
            raise NotFoundError("conversation not found") from None
        except HistoryUnavailable:
            raise Unavailable("conversation history is unavailable; try again shortly") from None
        self.conversation = (conversation_id, opened)
        history = sum(TOKENS_PER_MESSAGE + estimate(turn.content) for turn in opened.history)
        self.prompt_tokens += history
        await self.admission.reserve_more(history)  # 429 when the budget cannot hold it

    def account(self, generation: Generation, reported: object = None) -> Usage:
        """The generation's tokens, counted once: none for a replayed reply, else the
        upstream's own report, else an estimate from the prompt and what it produced."""
        usage = generation.usage
        if usage is None:
            if self.replayed:
                usage = NOTHING
            else:
                produced = estimate("".join(generation.text)) + estimate(
                    "".join(generation.reasoning)
                )
                usage = Usage.reported(reported) or Usage(self.prompt_tokens, produced, "estimate")
            generation.usage = usage
        return usage

    def ending(self, generation: Generation) -> None:
        self.account(generation)

    async def before_done(self, generation: Generation, done: Event) -> Event:
        reported = done.data.get("usage")
        usage = self.account(generation, reported)
        counted = {**reported, **usage.as_data()} if isinstance(reported, dict) else usage.as_data()
        ending = Event("done", {**done.data, "usage": counted})
        if self.conversation is None:
            return ending
        conversation_id, opened = self.conversation
        reply = "".join(generation.text)
        turns = [Turn("user", self.message), Turn("assistant", reply)]
        try:
            kept = await self.conversations.append(self.user, conversation_id, opened.epoch, turns)
        except HistoryUnavailable:
            log.warning("conversation turn not stored", conversation_id=conversation_id)
            return NOT_KEPT
        if not kept:  # deleted while the reply streamed: it stays deleted
            log.info("conversation deleted during the reply; turn dropped")
        return ending

    async def after_end(self, generation: Generation) -> None:
        entries = generation.entries
        natural = (
            generation.outcome == "done"
            and generation.base == 0  # all of it retained (a longer one is too big to cache)
            and entries
            and entries[-1].name == "done"
            and orjson.loads(entries[-1].data_json).get("reason") in NATURAL_ENDS
        )
        stored = None
        if natural and not self.replayed:  # all but `start`
            stored = blob_of(e.wire for e in entries[1:])
        self.admission.account(self.account(generation))
        self.admission.settle_cache(stored)
        self.admission.release()
