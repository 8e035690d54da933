"""A chat request, from its admission to the response that reads its generation; and a
client coming back to a stream (`resume`) or stopping it (`stop`).

    admit (admission/: rate, slots, budget, cache ticket: one Redis round trip)
      -> open the conversation, if any (conversations/), its history reserved on top
      -> the source: the cached reply, an identical request's, or the backend's (cache/)
      -> a generation of it (generation.py), and a response that reads it (response.py)
      -> at the generation's end, `ChatFinisher`: count the tokens and put them on `done`,
         keep the turn before `done` goes out, and hand back what admission took (in
         reverse order, with what was used: the tokens, the reply for the cache)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive

from .admission import Admission, Admitted, Asking, Ending
from .admission.rate import RateGate
from .admission.ticket import TicketGate
from .backends import NATURAL_ENDS, Backend, BackendError, ChatRequest, Turn
from .cache import CacheTicket, ResponseCache, entry_of
from .conversations import Conversations, HistoryUnavailable, NotFound, Opened
from .errors import (
    ClientGone,
    InvalidInput,
    NotFoundError,
    TooManyRequests,
    Unavailable,
    UpstreamFailed,
)
from .events import EVENTS, Codec, Event
from .generation import Generation
from .generations import Crowded, Generations
from .log import Cursor
from .observability import metrics
from .observability.logging import get_logger
from .record import RequestRecord
from .response import EventStream, Responses
from .tokens import NOTHING, TOKENS_PER_MESSAGE, Usage, estimate, estimate_prompt

log = get_logger("service.chat")

NOT_KEPT = Event(
    "error",
    {"code": "history_unavailable", "message": "the reply could not be saved; send it again"},
)
NOT_FOUND = "stream not found"
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{22}")
LAST_EVENT_ID = re.compile(r"([A-Za-z0-9_-]{22}):([0-9]{1,9})")
# A reader leaves when its client does; there is no better moment to name.
READERS_RETRY_AFTER = 5


@dataclass(frozen=True, slots=True)
class Ask:
    """What a client asks for, on either surface: the newest message and what came before
    it (an OpenAI client's messages; a conversation's are read after admission), the
    model, the reply's own token limit and other fields for the upstream, what makes two
    requests the same for the cache (default: the message), the codec its stream is
    written in, and the surface's own rate-limit headers."""

    message: str
    history: Sequence[Turn] = ()
    conversation_id: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    subject: str | None = None
    codec: Codec = EVENTS
    limits: Callable[[dict[str, str]], dict[str, str]] | None = None


class Chat:
    def __init__(
        self,
        admission: Admission,
        ticket_gate: TicketGate,
        resumes: RateGate,
        conversations: Conversations,
        cache: ResponseCache,
        backend: Backend,
        generations: Generations,
        responses: Responses,
        max_message_chars: int,
    ) -> None:
        self.max_message_chars = max_message_chars
        self.admission = admission
        self.ticket_gate = ticket_gate  # whose holding is the request's cache ticket
        self.resumes = resumes
        self.conversations = conversations
        self.cache = cache
        self.backend = backend
        self.generations = generations
        self.responses = responses

    def check(self, message: str, record: RequestRecord) -> None:
        """422 for a message that is blank or longer than CHAT_MAX_MESSAGE_CHARS."""
        record.message_chars = len(message)
        if not message.strip():
            raise InvalidInput("message is empty")
        if len(message) > self.max_message_chars:
            raise InvalidInput(f"message is longer than {self.max_message_chars} characters")

    async def respond(
        self, receive: Receive, record: RequestRecord, user: str, ask: Ask, no_cache: bool = False
    ) -> EventStream:
        """Admit the request, start its generation, and answer with a stream that reads it."""
        generation, cursor, headers = await self.start(receive, record, user, ask, no_cache)
        return self.responses.respond(generation, cursor, headers)

    async def complete(
        self, receive: Receive, record: RequestRecord, user: str, ask: Ask, no_cache: bool = False
    ) -> tuple[Generation, dict[str, str]]:
        """Admit the request and read its generation to the end, for an answer in one piece
        (it holds its stream slot meanwhile); ClientGone if the client leaves first, which
        leaves the generation as a dropped stream does."""
        generation, cursor, headers = await self.start(receive, record, user, ask, no_cache)
        reading = asyncio.ensure_future(_read_to_end(cursor))
        leaving = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({reading, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
            reading.cancel()
            self.generations.leave(generation, cursor)
        if not generation.ended:
            raise ClientGone("the client closed the request")
        record.usage = generation.usage
        return generation, headers

    async def start(
        self, receive: Receive, record: RequestRecord, user: str, ask: Ask, no_cache: bool
    ) -> tuple[Generation, Cursor, dict[str, str]]:
        asking = Asking(
            user,
            ask.subject or ask.message,
            model=ask.model,
            prompt_tokens=estimate_prompt([*(t.content for t in ask.history), ask.message]),
            output_tokens=ask.max_tokens,
            conversation_id=ask.conversation_id,
            no_cache=no_cache,
            timing=record.timing,
        )
        try:
            admitted = await self.admission.admit(asking)
        except TooManyRequests as refused:
            if ask.limits is not None:  # the surface's own rate-limit headers, here too
                refused.headers = ask.limits(refused.headers)
            raise
        ticket: CacheTicket = admitted.holding(self.ticket_gate)
        record.cache = ticket.mode
        finisher = ChatFinisher(admitted, ticket, self.conversations, user, ask)
        try:
            history = list(ask.history)
            if ask.conversation_id is not None:
                history += await finisher.open_conversation(ask.conversation_id)
            chat = ChatRequest(ask.message, history, ask.model, ask.max_tokens, ask.params)
            source = await self.cache.source(
                ticket, lambda: open_unless_gone(receive, self.backend, chat)
            )
        except BaseException:
            admitted.release()  # nothing will stream: hand back what admission took
            raise
        generation, cursor = self.generations.start(user, source, finisher, ticket.mode, ask.codec)
        record.stream_id = generation.id
        headers = admitted.headers()
        return generation, cursor, ask.limits(headers) if ask.limits else headers

    async def resume(
        self,
        record: RequestRecord,
        user: str,
        stream_id: str,
        after: int,
        codec: str | None = None,
        limits: Callable[[dict[str, str]], dict[str, str]] | None = None,
    ) -> EventStream:
        """The events of `user`'s stream after entry `after`, then the live rest. Spends one
        from the user's resumes (CHAT_RESUME_RATE_LIMIT, found or not: each re-reads and
        re-sends up to CHAT_RESUME_MAX_BYTES) and no chat rate or token budget; takes no
        stream slot: it starts nothing. 404, the same in every case, for a stream unknown,
        expired, not retained from there, or another user's."""
        await self.resumes.spend(user)
        try:
            found = await self.generations.resume(stream_id, user, after, codec)
        except Crowded:
            metrics.rate_limited.labels("readers").inc()
            raise TooManyRequests(
                "this stream has as many readers as it may", READERS_RETRY_AFTER
            ) from None
        if found is None:
            metrics.stream_resumes.labels("not_found").inc()
            raise NotFoundError(NOT_FOUND)
        metrics.stream_resumes.labels("resumed").inc()
        record.resumed = True
        generation, cursor = found
        try:
            headers = await self.admission.standing(Asking(user, ""))
        except BaseException:
            self.generations.leave(generation, cursor)
            raise
        headers["X-Cache"] = generation.cache_mode
        return self.responses.respond(generation, cursor, limits(headers) if limits else headers)

    async def resume_from_header(
        self,
        record: RequestRecord,
        user: str,
        last_event_id: str,
        codec: str | None = None,
        limits: Callable[[dict[str, str]], dict[str, str]] | None = None,
    ) -> EventStream:
        """A chat request that carries a `Last-Event-ID` (EventSource-style clients
        reconnect so): it resumes that stream instead of starting another, or is a 404."""
        parsed = parse_last_event_id(last_event_id)
        if parsed is None:
            metrics.stream_resumes.labels("not_found").inc()
            raise NotFoundError(NOT_FOUND)
        return await self.resume(record, user, *parsed, codec=codec, limits=limits)

    async def stop(self, user: str, stream_id: str) -> None:
        """Stop `user`'s generation wherever it runs; 404 if there is none."""
        check_stream_id(stream_id)
        if not await self.generations.stop(stream_id, user):
            raise NotFoundError(NOT_FOUND)


def check_stream_id(value: str) -> None:
    """404, as for any unknown stream, unless `value` has a stream id's form."""
    if not STREAM_ID.fullmatch(value):
        metrics.stream_resumes.labels("not_found").inc()
        raise NotFoundError(NOT_FOUND)


def parse_last_event_id(value: str) -> tuple[str, int] | None:
    """`<stream>:<n>` as the events' ids are written; None for anything else."""
    match = LAST_EVENT_ID.fullmatch(value.strip())
    return (match.group(1), int(match.group(2))) if match else None


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


async def _read_to_end(cursor: Cursor) -> None:
    """Read a log as a response would, to its end, for an answer in one piece (a reader
    that never read would hold its generation back)."""
    log = cursor.log
    while True:
        batch = cursor.take()
        if batch.kinds:
            cursor.sent(batch)
        elif log.closed:
            return
        else:
            await cursor.wait()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class ChatFinisher:
    """What happens around a chat generation's end (generation.Finisher)."""

    __slots__ = ("admitted", "conversation", "conversations", "message", "ticket", "user")

    def __init__(
        self,
        admitted: Admitted,
        ticket: CacheTicket,
        conversations: Conversations,
        user: str,
        ask: Ask,
    ) -> None:
        self.admitted = admitted
        self.ticket = ticket
        self.conversations = conversations
        self.user = user
        self.message = ask.message
        self.conversation: tuple[str, Opened] | None = None

    async def open_conversation(self, conversation_id: str) -> list[Turn]:
        """Read its history (creating it if new): 404 for another user's, 503 when the
        store is away; its tokens are reserved on top (429 when they do not fit)."""
        try:
            opened = await self.conversations.open(self.user, conversation_id, self.message)
        except NotFound:
            raise NotFoundError("conversation not found") from None
        except HistoryUnavailable:
            raise Unavailable("conversation history is unavailable; try again shortly") from None
        self.conversation = (conversation_id, opened)
        history = sum(TOKENS_PER_MESSAGE + estimate(turn.content) for turn in opened.history)
        self.admitted.asking.prompt_tokens += history
        await self.admitted.grow(history)
        return opened.history

    def account(self, generation: Generation, reported: object = None) -> Usage:
        """The generation's tokens, counted once: none for a replayed reply, else the
        upstream's own report, else an estimate from the prompt and what it produced."""
        usage = generation.usage
        if usage is None:
            if self.ticket.replayed:
                usage = NOTHING
            else:
                produced = estimate("".join(generation.text)) + estimate(
                    "".join(generation.reasoning)
                )
                prompt = self.admitted.asking.prompt_tokens
                usage = Usage.reported(reported) or Usage(prompt, produced, "estimate")
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
        """Hand back what admission took, with what the generation used: its tokens, and
        its reply when it ended by itself and was all retained (a longer one is too big to
        cache)."""
        done = generation.ending
        natural = (
            generation.outcome == "done"
            and generation.log.base == 0
            and done is not None
            and done.name == "done"
            and done.data.get("reason") in NATURAL_ENDS
        )
        blob = entry_of(generation) if natural else None
        self.admitted.release(Ending(self.account(generation), blob))
