"""Counting tokens without a tokenizer: an estimate from the characters, honest about being one.

The real count of a model's tokens needs its tokenizer's vocabulary. `tiktoken` knows
OpenAI's encodings but downloads their files on first use, and those files do not ship in
any package this service can install, so here the count is estimated from the text:

- ASCII: about four characters a token in English prose and code (OpenAI's own rule of
  thumb for cl100k/o200k); counted as one token per three characters, rounded up, so
  that the estimate errs high on the reservation;
- every other character (CJK, accents, emoji) as one token, which is what those encodings
  give for most CJK characters and more than they give for accented Latin;
- four tokens for each message's framing in the chat format, and three priming the reply.

The estimate is used before a stream (the reservation against a token budget) and after it
only when the upstream did not report its own `usage`; the demo backend has no tokenizer,
so its usage is always estimated. Every figure says which it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard

ASCII_CHARS_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


def estimate(text: str) -> int:
    """Estimated tokens of `text`."""
    if not text:
        return 0
    ascii_chars = len(text.encode("ascii", "ignore"))
    other = len(text) - ascii_chars
    return -(-ascii_chars // ASCII_CHARS_PER_TOKEN) + other


def estimate_prompt(messages: Iterable[str]) -> int:
    """Estimated prompt tokens of a chat request whose messages hold these texts."""
    total = TOKENS_PER_REPLY
    for content in messages:
        total += TOKENS_PER_MESSAGE + estimate(content)
    return total


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # "upstream": its own count; "estimate": counted here from the text; "cache": a reply
    # replayed from the cache (or an identical request's), which used no tokens.
    source: str

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_data(self) -> dict[str, int]:
        """As `done` carries it (the upstream's own field names)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    @classmethod
    def reported(cls, data: object) -> Usage | None:
        """An upstream's `usage` object, or None when it says nothing usable."""
        if not isinstance(data, dict):
            return None
        prompt, completion = data.get("prompt_tokens"), data.get("completion_tokens")
        if _count(prompt) and _count(completion):
            return cls(prompt, completion, "upstream")
        return None


NOTHING = Usage(0, 0, "cache")


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**40
