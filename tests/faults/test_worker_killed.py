"""A worker SIGKILLed under continuous traffic: only the streams that worker was serving at
that instant fail; every other stream, before, during and after, ends with `done`; gunicorn
boots a replacement, and the replacement serves.

Which worker serves which stream is read from /proc (the client's port is the peer port of
one of the worker's sockets). New requests wait on a gate while the test looks and kills, so
the set of streams in flight at the kill is exact, with no request half-connected.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from dataclasses import dataclass

import httpx

from tests.support.procfs import peer_ports
from tests.support.service import LIMITS_OFF, Service, running_service
from tests.support.sse import read_stream
from tests.support.tokens import bearer, make_token

CLIENTS = 6
MAX_REQUESTS = 400  # a bound on the traffic whatever happens
WARM_UP_DONE = 6  # streams finished before the kill
AFTER_REPLACEMENT = 12  # streams finished after the new worker booted


@dataclass
class Result:
    port: int | None = None
    done: bool = False
    error: str | None = None
    started_after_kill: bool = False


class Traffic:
    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.gate = threading.Lock()  # held while a request connects, and during the kill
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.ids = itertools.count()
        self.results: dict[int, Result] = {}
        self.in_flight: dict[int, int] = {}  # request id -> client port, once headers came
        self.killed = False
        self.finished_after: list[int] = []  # ids of `done` streams, in finishing order
        self.tokens = [make_token(sub=f"kill-{u}") for u in range(3)]

    def client(self, number: int) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection per request
        with httpx.Client(base_url=self.svc.url, timeout=15, limits=limits) as http:
            while not self.stop.is_set():
                with self.gate:
                    rid = next(self.ids)
                    if rid >= MAX_REQUESTS:
                        return
                    result = self.results[rid] = Result(started_after_kill=self.killed)
                    headers = {
                        **bearer(self.tokens[number % len(self.tokens)]),
                        "X-Request-ID": f"kill-{rid}",
                    }
                    request = http.build_request("GET", f"/chat/kill-{rid}", headers=headers)
                    try:
                        response = http.send(request, stream=True)
                    except httpx.HTTPError as exc:
                        result.error = repr(exc)
                        self._finished(rid)
                        continue
                    stream_info = response.extensions["network_stream"]
                    result.port = stream_info.get_extra_info("client_addr")[1]
                    self.in_flight[rid] = result.port
                try:
                    stream = read_stream(response, time.monotonic())
                    result.done = stream.names[-1:] == ["done"]
                    if not result.done:
                        result.error = f"ended with {stream.names[-3:]}"
                except httpx.HTTPError as exc:
                    result.error = repr(exc)
                finally:
                    response.close()
                    self._finished(rid)

    def _finished(self, rid: int) -> None:
        with self.changed:
            self.in_flight.pop(rid, None)
            if self.results[rid].done:
                self.finished_after.append(rid)
            self.changed.notify_all()

    def wait_until(self, done_count: int, timeout: float = 30) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: len(self.finished_after) >= done_count, timeout)
        assert ok, f"only {len(self.finished_after)} streams finished"


def test_sigkilled_worker_fails_only_its_own_streams_and_is_replaced() -> None:
    env = {
        "CHAT_DEMO_DELAY_SCALE": "0.3",  # about 1.3 s per stream
        **LIMITS_OFF,
        "CHAT_CACHE_TTL": "0",
    }
    with running_service(env, workers=2) as svc:
        workers = svc.worker_pids()
        traffic = Traffic(svc)
        threads = [threading.Thread(target=traffic.client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            traffic.wait_until(WARM_UP_DONE)
            with traffic.gate:
                # Nobody is connecting now: every stream in flight is held by one worker.
                in_flight = dict(traffic.in_flight)
                held = {pid: peer_ports(pid, svc.port) for pid in workers}
                victim = max(workers, key=lambda pid: len(held[pid] & set(in_flight.values())))
                # Counted before the kill: gunicorn may log the replacement a moment after.
                booted = sum("Booting worker" in line for line in svc.lines)
                ready = sum("Application startup complete" in line for line in svc.lines)
                os.kill(victim, signal.SIGKILL)
                traffic.killed = True
            svc.wait_for_event("Booting worker", count=booted + 1, timeout=30)
            svc.wait_for_event("Application startup complete", count=ready + 1, timeout=30)
            now_serving = svc.worker_pids()
            (new_pid,) = now_serving - workers
            # From here on the new worker takes its share; keep going until it has shown it.
            served_by_new = False
            target = len(traffic.finished_after) + AFTER_REPLACEMENT
            while not served_by_new or len(traffic.finished_after) < target:
                with traffic.gate:
                    ports = set(traffic.in_flight.values())
                    served_by_new = served_by_new or bool(peer_ports(new_pid, svc.port) & ports)
                traffic.wait_until(len(traffic.finished_after) + 1)
        finally:
            traffic.stop.set()
            for thread in threads:
                thread.join(30)
    records = svc.records()  # after the stop: a client can see `done` before its log line

    survivor = (workers - {victim}).pop()
    on_victim = {rid for rid, port in in_flight.items() if port in held[victim]}
    on_survivor = {rid for rid, port in in_flight.items() if port in held[survivor]}
    failed = {rid for rid, r in traffic.results.items() if not r.done}
    print(
        f"killed worker {victim} with {len(on_victim)} streams open on it and "
        f"{len(on_survivor)} on the other; {len(failed)} failed; "
        f"{len(traffic.results)} requests in all; replacement pid {new_pid}"
    )
    assert on_victim, "the killed worker was serving nothing: the test proved nothing"
    # Only streams on the killed worker may fail; all others, whenever they started, finish
    # (in flight but held by neither worker: the last bytes were read, the client closing).
    assert failed <= on_victim, {rid: traffic.results[rid].error for rid in failed - on_victim}
    assert all(traffic.results[rid].done for rid in set(in_flight) - on_victim)
    assert all(r.done for r in traffic.results.values() if r.started_after_kill)
    assert now_serving == {survivor, new_pid}
    assert served_by_new
    # The killed worker never got to log its streams; every other stream was logged `done`.
    access = {r["request_id"]: r for r in records if r["event"] == "stream finished"}
    for rid, result in traffic.results.items():
        if result.done:
            assert access[f"kill-{rid}"]["outcome"] == "done"
        else:
            assert f"kill-{rid}" not in access
