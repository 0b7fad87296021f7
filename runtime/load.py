"""The load generator: open-loop Poisson traffic and closed-loop backlog against a fleet.

Latency-critical traffic arrives open-loop (Poisson, at a rate, whatever the server's state), so
queueing shows up as latency the way it does in production; bulk traffic is a closed-loop backlog
of workers that always have the next batch ready. Streaming models are consumed token by token and
their time to first token is measured at the client. Each model's clients run in a process of
their own, so no client's timings carry another's CPU work. Every run is bounded in time and in
requests, and only loopback addresses are accepted. Each request becomes a `Record`; what they add up to is
worked out in `domain/stats.py`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import multiprocessing as mp
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from domain.spec import FleetSpec, ModelSpec, Sla
from domain.stats import LoadReport, ModelStats, Record, summarize
from runtime.words import WORDS


@dataclass(frozen=True)
class ModelLoad:
    """Traffic for one model: open-loop `rate` requests/s and/or `concurrency` closed-loop workers."""

    model: str
    rate: float = 0.0
    concurrency: int = 0
    batch: int = 1
    """Items per request (the client-side batch)."""
    words: tuple[int, int] = (32, 160)
    """Prompt / text length range in words, drawn uniformly per request."""
    max_tokens: int = 16
    """Tokens to generate per chat request."""

    def __post_init__(self) -> None:
        if self.rate < 0 or self.concurrency < 0:
            raise ValueError(f"{self.model}: rate and concurrency must be >= 0")
        if self.rate == 0 and self.concurrency == 0:
            raise ValueError(f"{self.model}: give a rate (open loop) or a concurrency (backlog)")
        if self.batch < 1 or not 1 <= self.words[0] <= self.words[1]:
            raise ValueError(f"{self.model}: batch must be >= 1 and words a range of >= 1")


@dataclass(frozen=True)
class Phase:
    """One stretch of a traffic trace: these loads for this long."""

    name: str
    duration_s: float
    loads: tuple[ModelLoad, ...]


SHED_BACKOFF_S = 0.25
"""A closed-loop (bulk) client whose request was shed (queue full), or that found the server
unreachable (it is being restarted), waits this long before the next: back-pressure, not a retry
storm (bulk clients that spun on a restarting server counted 46,131 failures while it was down)."""


@dataclass(frozen=True)
class Target:
    """Where and what a model is: its gRPC endpoint, built-in kind, streaming flag and SLA."""

    grpc: str
    kind: str | None
    streaming: bool
    sla: Sla | None


def failure_reason(message: str) -> str:
    """A short, stable reason for a failed request, from Triton's or gRPC's message."""
    m = message.lower()
    if "timeout expired" in m:
        return "queue-timeout"
    if "exceeds maximum queue size" in m or "maximum queue size" in m:
        return "queue-full"
    if "deadline" in m:
        return "client-timeout"
    if "unavailable" in m or "not ready" in m or "connect" in m or "unknown model" in m:
        return "unavailable"
    if "cancel" in m:
        return "canceled"
    return "error"


def require_loopback(hostport: str) -> None:
    """Refuse any target that is not on this machine's loopback."""
    host = hostport.rsplit(":", 1)[0].strip("[]")
    try:
        addrs = {str(ai[4][0]) for ai in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise ValueError(f"cannot resolve {host!r}") from None
    for addr in addrs:
        if not ipaddress.ip_address(addr.split("%")[0]).is_loopback:
            raise ValueError(f"load is only sent to loopback addresses; {hostport} resolves to {addr}")


def targets_for(spec: FleetSpec, grpc_of_server: Callable[[str], str]) -> dict[str, Target]:
    return {
        m.name: Target(grpc_of_server(m.server), client_kind(spec, m), m.streaming, m.sla)
        for m in spec.models
    }


def client_kind(spec: FleetSpec, model: ModelSpec) -> str | None:
    """The built-in whose requests a client sends the model: its own, or for an ensemble the kind of
    the step that reads most of the ensemble's inputs (chat for guard-then-chat: PROMPT and
    MAX_TOKENS; reranker for embed-then-rerank: QUERY and DOCUMENT)."""
    ens = model.source.ensemble
    if ens is None:
        return model.source.builtin
    inputs = set(ens.inputs())
    step = max(ens.steps, key=lambda s: len(inputs & set(s.input_map.values())))
    return spec.model(step.model).source.builtin


def _text(rng: np.random.Generator, words: tuple[int, int]) -> bytes:
    n = int(rng.integers(words[0], words[1] + 1))
    return " ".join(rng.choice(WORDS, n)).encode()


def _bytes_input(name: str, values: list[bytes]) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, [len(values), 1], "BYTES")
    inp.set_data_from_numpy(np.array(values, dtype=object).reshape(-1, 1))
    return inp


def build_inputs(kind: str | None, load: ModelLoad, rng: np.random.Generator) -> list[grpcclient.InferInput]:
    """Inputs for one request to a built-in demo model of `kind`."""
    n = load.batch
    if kind == "chat":
        tokens = grpcclient.InferInput("MAX_TOKENS", [1, 1], "INT32")
        tokens.set_data_from_numpy(np.array([[load.max_tokens]], dtype=np.int32))
        return [_bytes_input("PROMPT", [_text(rng, load.words)]), tokens]
    if kind in ("embedder", "guard"):
        return [_bytes_input("TEXT", [_text(rng, load.words) for _ in range(n)])]
    if kind == "reranker":
        return [
            _bytes_input("QUERY", [_text(rng, (4, 12)) for _ in range(n)]),
            _bytes_input("DOCUMENT", [_text(rng, load.words) for _ in range(n)]),
        ]
    raise ValueError(f"{load.model}: the load generator drives the built-in demo models; {kind!r} is not one")


class LoadRun:
    """One bounded run. `run()` blocks; `start()` runs it in the background so the caller can
    watch `snapshot()` or reconfigure the fleet meanwhile, then `join()` returns the report.

    Each model's clients run in a process of their own, as they do in production (a chat frontend,
    a safety check, a batch embedding job are different programs): a latency-critical client never
    waits for a bulk client's CPU work, its event loop or its gRPC connection, so its timings are
    the server's latency plus its own, not the other clients'. Every process keeps the same
    schedule: phase k starts at the run's start plus the durations before it, for every model.
    Their requests come back here as `Record`s while the run goes on."""

    def __init__(
        self,
        loads: Iterable[ModelLoad],
        targets: Mapping[str, Target],
        *,
        duration_s: float,
        max_requests: int = 100_000,
        request_timeout_s: float = 30.0,
        seed: int = 0,
        phases: Sequence[Phase] | None = None,
    ) -> None:
        """`loads` for `duration_s`; or, with `phases`, a trace: each phase's loads for its own
        duration, one after the other (`loads` and `duration_s` are then the phases' own)."""
        if phases:
            loads = [ld for ph in phases for ld in ph.loads]
            duration_s = sum(ph.duration_s for ph in phases)
        self.loads = list(loads)
        self.phases = list(phases) if phases else [Phase("all", duration_s, tuple(self.loads))]
        for load in self.loads:
            if load.model not in targets:
                raise ValueError(f"no model {load.model!r} in the fleet (have: {', '.join(targets)})")
            require_loopback(targets[load.model].grpc)
        if not 0 < duration_s <= 24 * 3600:
            raise ValueError("duration_s must be within (0, 86400]")
        self.targets = dict(targets)
        self.duration_s = duration_s
        self.max_requests = max_requests
        self.request_timeout_s = request_timeout_s
        self.seed = seed
        self.records: list[Record] = []
        self._errors: dict[str, str] = {}
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._thread: threading.Thread | None = None
        self._exception: BaseException | None = None
        ctx = mp.get_context("spawn")
        self._ctx = ctx
        self._stop = ctx.Event()
        self._budget = ctx.Value("q", max_requests)
        self._processes: list[BaseProcess] = []

    # ------------------------------------------------------------------ control
    def run(self) -> LoadReport:
        return self.start().join()

    def start(self) -> LoadRun:
        """Start every model's client process, then the run once they are all ready to send."""
        out: Any = self._ctx.Queue()
        ready, go = self._ctx.Semaphore(0), self._ctx.Value("d", 0.0)
        models = list(dict.fromkeys(ld.model for ld in self.loads))
        for model in models:
            schedule = [
                (ph.duration_s, [(i, ld) for i, ld in enumerate(ph.loads) if ld.model == model])
                for ph in self.phases
            ]
            proc = self._ctx.Process(
                target=_client_process,
                args=(model, schedule, self.targets[model], self.request_timeout_s, self.seed,
                      self._budget, self._stop, ready, go, out),
                name=f"slatune-load-{model}", daemon=True,
            )  # fmt: skip
            proc.start()
            self._processes.append(proc)
        waiting, deadline = len(models), time.monotonic() + READY_TIMEOUT_S
        while waiting:
            if ready.acquire(timeout=0.5):
                waiting -= 1
                continue
            dead = [p.name for p in self._processes if not p.is_alive()]
            if dead or time.monotonic() > deadline:
                self._stop.set()
                why = f"{', '.join(dead)} exited" if dead else f"not ready in {READY_TIMEOUT_S:g} s"
                raise RuntimeError(
                    f"the load's client processes failed to start ({why}); a script that starts a "
                    "load must guard its own code with `if __name__ == '__main__':` (multiprocessing's spawn)"
                )
        self._started_at = time.monotonic() + 0.05
        with go.get_lock():
            go.value = self._started_at
        self._thread = threading.Thread(
            target=self._drain, args=(out, len(models)), name="slatune-load", daemon=True
        )
        self._thread.start()
        return self

    def _drain(self, out: Any, clients: int) -> None:
        """Take the clients' records as they come, until every client has said it is done."""
        done = 0
        try:
            while done < clients:
                try:
                    kind, payload = out.get(timeout=1.0)
                except queue.Empty:
                    if not any(p.is_alive() for p in self._processes):
                        raise RuntimeError("a load client process died without finishing") from None
                    continue
                if kind == "records":
                    self.records.extend(Record(*r) for r in payload)
                elif kind == "error":
                    for reason, message in payload.items():
                        self._errors.setdefault(reason, message)
                elif kind == "failed":
                    raise RuntimeError(payload)
                else:
                    done += 1
        except BaseException as exc:  # surfaced by join()
            self._stop.set()
            self._exception = exc
        finally:
            self._ended_at = time.monotonic()
            for p in self._processes:
                p.join(timeout=5)

    def stop(self) -> None:
        """End early: no new requests; those in flight finish or time out."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> LoadReport:
        if self._thread is not None:
            self._thread.join(timeout)
        if self._exception is not None:
            raise self._exception
        return self.report()

    @property
    def running(self) -> bool:
        """Started with `start()` and not finished yet."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def elapsed(self) -> float:
        if self._started_at is None:
            return 0.0
        return max((self._ended_at or time.monotonic()) - self._started_at, 0.0)

    @property
    def phase_started(self) -> list[float]:
        """Monotonic start of each phase that has begun (every client keeps the same schedule)."""
        if self._started_at is None:
            return []
        now, at, out = time.monotonic(), self._started_at, []
        for ph in self.phases:
            if at > now or (self._ended_at is not None and at >= self._ended_at):
                break
            out.append(at)
            at += ph.duration_s
        return out

    def report(self) -> LoadReport:
        duration = self.elapsed
        slas = {name: t.sla for name, t in self.targets.items()}
        models = [ld.model for ld in self.loads]
        return LoadReport(duration, summarize(list(self.records), duration, slas, models), dict(self._errors))

    def snapshot(self, window_s: float = 5.0) -> dict[str, ModelStats]:
        """Statistics of the requests that finished in the last `window_s` seconds (for live
        tables); only requests started within the request timeout of that window can have."""
        now = time.monotonic()
        recent = [r for r in list(self.records) if r.started >= now - window_s - self.request_timeout_s]
        recent = [r for r in recent if r.started + r.latency >= now - window_s]
        slas = {name: t.sla for name, t in self.targets.items()}
        return summarize(
            recent, min(window_s, self.elapsed) or window_s, slas, [ld.model for ld in self.loads]
        )


READY_TIMEOUT_S = 120.0
"""How long the client processes may take to start (import, dial) before the run gives up."""
FLUSH_S = 0.2
"""How often a client process sends its new records back."""


def _client_process(
    model: str,
    schedule: list[tuple[float, list[tuple[int, ModelLoad]]]],
    target: Target,
    timeout_s: float,
    seed: int,
    budget: Any,
    stop: Any,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    """One model's clients, in a process of their own: wait for the run's start, then keep the
    schedule. Ctrl-C is the parent's to handle (it stops the run); a parent that died ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(_Client(model, schedule, target, timeout_s, seed, budget, stop, out).main(ready, go))
    except BaseException as exc:
        out.put(("failed", f"{model}: {exc.__class__.__name__}: {exc}"))
    finally:
        out.put(("done", model))
        out.close()
        out.join_thread()


class _Client:
    """The asyncio side of one model's clients: open-loop arrivals and closed-loop workers, phase
    by phase, each request recorded."""

    def __init__(
        self,
        model: str,
        schedule: list[tuple[float, list[tuple[int, ModelLoad]]]],
        target: Target,
        timeout_s: float,
        seed: int,
        budget: Any,
        stop: Any,
        out: Any,
    ) -> None:
        self.model, self.schedule, self.target = model, schedule, target
        self.timeout_s, self.seed, self.budget, self.stop, self.out = timeout_s, seed, budget, stop, out
        self.parent = os.getppid()
        self.pending: list[tuple[Any, ...]] = []
        self.errors: dict[str, str] = {}

    def stopped(self) -> bool:
        return self.stop.is_set() or os.getppid() != self.parent

    def exhausted(self) -> bool:
        """The run's request budget (max_requests, shared by every client) is spent: the run ends."""
        return bool(self.budget.value <= 0)

    def take(self, deadline: float) -> bool:
        if self.stopped() or time.monotonic() >= deadline:
            return False
        with self.budget.get_lock():
            if self.budget.value <= 0:
                return False
            self.budget.value -= 1
        return True

    async def main(self, ready: Any, go: Any) -> None:
        client = aioclient.InferenceServerClient(self.target.grpc)
        flusher = asyncio.create_task(self._flush_every())
        in_flight: set[asyncio.Task[str | None]] = set()
        try:
            ready.release()
            while go.value == 0.0 and not self.stopped():
                await asyncio.sleep(0.01)
            start = go.value
            await asyncio.sleep(max(start - time.monotonic(), 0.0))
            for p, (duration, loads) in enumerate(self.schedule):
                deadline = start + duration
                tasks: list[asyncio.Task[None]] = []
                for i, load in loads:
                    rng = np.random.default_rng(self.seed * 1000 + p * 10_000 + i)
                    if load.rate > 0:
                        tasks.append(
                            asyncio.create_task(self._open_loop(client, load, rng, deadline, in_flight))
                        )
                    for w in range(load.concurrency):
                        wrng = np.random.default_rng(self.seed * 1000 + p * 10_000 + i * 100 + w + 1)
                        tasks.append(asyncio.create_task(self._closed_loop(client, load, wrng, deadline)))
                await asyncio.gather(*tasks)
                while not (self.stopped() or self.exhausted()) and time.monotonic() < deadline:
                    await asyncio.sleep(min(0.1, deadline - time.monotonic()))  # idle this phase
                if self.stopped() or self.exhausted():
                    break
                start = deadline
            if in_flight:
                await asyncio.wait(in_flight, timeout=self.timeout_s + 5)
        finally:
            flusher.cancel()
            self._flush()
            await client.close()

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self._flush()

    def _flush(self) -> None:
        if self.errors:
            self.out.put(("error", dict(self.errors)))
            self.errors.clear()
        if self.pending:
            self.out.put(("records", self.pending))
            self.pending = []

    async def _open_loop(
        self,
        client: aioclient.InferenceServerClient,
        load: ModelLoad,
        rng: np.random.Generator,
        deadline: float,
        in_flight: set[asyncio.Task[str | None]],
    ) -> None:
        next_at = time.monotonic()
        while True:
            next_at += float(rng.exponential(1.0 / load.rate))
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            if not self.take(deadline):
                return
            task = asyncio.create_task(self._one(client, load, rng))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

    async def _closed_loop(
        self,
        client: aioclient.InferenceServerClient,
        load: ModelLoad,
        rng: np.random.Generator,
        deadline: float,
    ) -> None:
        while self.take(deadline):
            if await self._one(client, load, rng) in ("queue-full", "unavailable"):  # back-pressure
                await asyncio.sleep(min(SHED_BACKOFF_S, max(deadline - time.monotonic(), 0)))

    async def _one(
        self, client: aioclient.InferenceServerClient, load: ModelLoad, rng: np.random.Generator
    ) -> str | None:
        """Send one request and record it; its failure reason, None when it succeeded."""
        target = self.target
        inputs = build_inputs(target.kind, load, rng)
        started = time.monotonic()
        ttft: float | None = None
        error: str | None = None
        try:
            if target.streaming:
                ttft = await self._stream(client, load.model, inputs, started)
            else:
                await client.infer(
                    load.model,
                    inputs,
                    client_timeout=self.timeout_s,
                    parameters={"slatune_sent_ns": time.time_ns()},
                )
        except InferenceServerException as exc:
            error = failure_reason(str(exc.message() or exc))
            self.errors.setdefault(error, str(exc.message() or exc)[:300])
        except TimeoutError:
            error = "client-timeout"
        items = 1 if target.streaming else load.batch
        self.pending.append((load.model, started, time.monotonic() - started, ttft, items, error))
        return error

    async def _stream(
        self,
        client: aioclient.InferenceServerClient,
        model: str,
        inputs: list[grpcclient.InferInput],
        started: float,
    ) -> float:
        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": model, "inputs": inputs, "parameters": {"slatune_sent_ns": time.time_ns()}}

        ttft: float | None = None
        stream = client.stream_infer(one_request(), stream_timeout=self.timeout_s)
        try:
            async for result, error in stream:
                if error is not None:
                    raise error
                if ttft is None:
                    ttft = time.monotonic() - started
                params = result.get_response().parameters
                if "triton_final_response" in params and params["triton_final_response"].bool_param:
                    break
        except grpc.aio.AioRpcError as exc:  # the stream itself failed (a server gone, a deadline)
            raise InferenceServerException(f"{exc.code().name} {exc.details()}", exc.code().name) from exc
        if ttft is None:
            raise InferenceServerException("stream ended without a response")
        return ttft


def demo_mix(scale: float = 1.0) -> list[ModelLoad]:
    """The mixed workload of the embedded default fleet: open-loop chat and guard traffic at rates
    that matter, and a bulk backlog of embeddings and reranking. `scale` multiplies the rates."""
    return [
        ModelLoad("chat-llm", rate=3.0 * scale, words=(16, 64), max_tokens=16),
        ModelLoad("safety-guard", rate=15.0 * scale, words=(16, 64)),
        ModelLoad("embeddings", concurrency=2, batch=8, words=(16, 96)),
        ModelLoad("reranker", concurrency=1, batch=4, words=(16, 96)),
    ]


def shift_trace(phase_s: float) -> list[Phase]:
    """The demo mix through four shifts, `phase_s` each: steady; chat rate x2; bulk backlog x2;
    long chat prompts; steady again (what `benchmarks.shift` judges policies on)."""
    steady = demo_mix()
    chat, guard, emb, rer = steady
    bulk_x2 = (
        ModelLoad(emb.model, concurrency=emb.concurrency * 2, batch=emb.batch, words=emb.words),
        ModelLoad(rer.model, concurrency=rer.concurrency * 2, batch=rer.batch, words=rer.words),
    )
    return [
        Phase("steady", phase_s, tuple(steady)),
        Phase(
            "chat x2", phase_s, (ModelLoad(chat.model, rate=chat.rate * 2, words=chat.words), guard, emb, rer)
        ),
        Phase("bulk x2", phase_s, (chat, guard, *bulk_x2)),
        Phase(
            "long prompts",
            phase_s,
            (ModelLoad(chat.model, rate=chat.rate, words=(200, 480)), guard, emb, rer),
        ),
        Phase("steady again", phase_s, tuple(steady)),
    ]


def pipeline_mix() -> list[ModelLoad]:
    """The embedded pipeline fleet's demo traffic: chat users through guard-then-chat (4 tokens
    each), retrieval users through embed-then-rerank, an indexing job and a batch rerank keeping one
    request each in flight."""
    return [
        ModelLoad("chat-pipeline", rate=24.0, words=(16, 64), max_tokens=4),
        ModelLoad("retrieval", rate=1.0, batch=1, words=(16, 64)),
        ModelLoad("indexer", concurrency=1, batch=8, words=(16, 96)),
        ModelLoad("batch-rerank", concurrency=1, batch=2, words=(16, 96)),
    ]


def demo_trace(duration_s: float, spec: FleetSpec | None = None) -> list[Phase]:
    """What `slatune up --demo-load` drives: the steady demo mix, twice the chat traffic, twice the
    bulk backlog, and back: two of `shift_trace`'s shifts, each one a static configuration on a
    2-core host keeps at 99% of the guard's requests within target (`benchmarks.shift`). Chat and
    bulk doubling at once, as the demo had it, is more than the protective corner holds there: it
    kept the guard's 10 s p99 at 21-45 ms through it. (For the pipeline fleet: its mix, then twice
    the bulk backlog, and back.)"""
    if spec is not None and {"chat-pipeline", "retrieval"} <= set(spec.model_names):
        mix = pipeline_mix()
        bulk_x2 = [ModelLoad(ld.model, concurrency=ld.concurrency * 2, batch=ld.batch, words=ld.words)
                   if ld.concurrency else ld for ld in mix]  # fmt: skip
        return [
            Phase("steady", duration_s * 0.4, tuple(mix)),
            Phase("bulk x2", duration_s * 0.3, tuple(bulk_x2)),
            Phase("steady again", duration_s * 0.3, tuple(mix)),
        ]
    steady, chat_x2, more_bulk, _, again = shift_trace(1.0)
    return [
        replace(steady, duration_s=duration_s * 0.3),
        replace(chat_x2, duration_s=duration_s * 0.25),
        replace(more_bulk, duration_s=duration_s * 0.25),
        replace(again, duration_s=duration_s * 0.2),
    ]
