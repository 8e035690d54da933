"""Test servers that run their own asyncio loop in a thread (the fake OpenAI server, the
latency proxy) stop the same way."""

from __future__ import annotations

import asyncio
import threading


def stop_loop_thread(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """End the handlers still open (a stalled stream may sleep for an hour) before the loop
    goes, so none is left to be garbage-collected mid-await; then join the thread."""

    async def shutdown() -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        loop.stop()

    asyncio.run_coroutine_threadsafe(shutdown(), loop)
    thread.join(10)
