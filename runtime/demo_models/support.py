"""What the built-in demo models share: reading config parameters and batched text inputs."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import numpy as np


def parameters(args: dict[str, Any]) -> dict[str, str]:
    """The string parameters of the model's config.pbtxt, from the backend's initialize args."""
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


NICE = {"PRIORITY_MAX": 0, "PRIORITY_MIN": 19}
"""Triton's own mapping of a model's `optimization.priority` to CPU scheduling (its
GetCpuNiceLevel): max runs at nice 0, min at nice 19; default leaves the server's."""


def honour_compute_priority(args: dict[str, Any]) -> int | None:
    """Run this instance's process at the nice level its config's `optimization.priority` asks
    for, as a GPU backend runs a model's CUDA streams at that priority: a bulk model at min fills
    the cores the latency-critical models leave and yields them at once when those wake. Every
    thread the stub has now is set (Linux keeps a nice level and a policy per thread; threads
    started later inherit them). The nice level set, or None when the config leaves it to the server.

    At min the threads also take Linux's SCHED_IDLE policy (sched(7): "very low priority background
    jobs"), which a waking normal thread preempts at once. Nice 19 alone still held the guard and
    its clients up: the protective corner under the shift trace (30 s phases, two runs each) kept
    98.8% and 98.8% of the guard's requests within 20 ms as its clients saw them at nice 19, 99.3%
    and 99.7% with SCHED_IDLE, for the same bulk work (docs/triton.md)."""
    priority = json.loads(args["model_config"]).get("optimization", {}).get("priority")
    nice = NICE.get(str(priority))
    if nice is None:
        return None
    for tid in os.listdir("/proc/self/task"):
        # Lowering a nice level needs privilege; a thread may end meanwhile.
        with contextlib.suppress(PermissionError, ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            if nice == NICE["PRIORITY_MIN"]:
                os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
    return nice


def int_param(params: dict[str, str], name: str, default: int) -> int:
    return int(params.get(name, default))


def texts(pb_utils: Any, request: Any, name: str) -> list[bytes]:
    """A BYTES input of one request as a flat list (the batch dimension and [1] dims folded)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"missing input {name}")
    return [t if isinstance(t, bytes) else str(t).encode() for t in tensor.as_numpy().reshape(-1)]


def optional_int(pb_utils: Any, request: Any, name: str, default: int) -> int:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else int(np.asarray(tensor.as_numpy()).reshape(-1)[0])


def optional_float(pb_utils: Any, request: Any, name: str) -> float | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else float(np.asarray(tensor.as_numpy()).reshape(-1)[0])


def split_responses(pb_utils: Any, counts: list[int], name: str, values: np.ndarray) -> list[Any]:
    """One response per request from a batch computed together: request i gets the next counts[i] rows."""
    out, start = [], 0
    for n in counts:
        out.append(pb_utils.InferenceResponse([pb_utils.Tensor(name, values[start : start + n])]))
        start += n
    return out


LATENCY_BUCKETS_MS = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    12,
    14,
    16,
    18,
    20,
    25,
    30,
    40,
    50,
    60,
    75,
    100,
    125,
    150,
    175,
    200,
    250,
    300,
    400,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    5000,
    10000,
    20000,
    30000,
    60000,
]
"""Past any timeout a client uses (perf_analyzer's and slatune's load generator's reach 30 s), so
that a quantile lands in +Inf only for requests slower than any client waits for; a millisecond
apart up to 10 ms and no more than a quarter apart above, so that a quantile interpolated inside
a bucket is off by little, with a bound at every SLA target in the fleets (20, 200 ms). The same
bounds as the trace histograms (collectors/trace.py)."""
MAX_CLOCK_SKEW_NS = 600 * 10**9


class LatencyHistogram:
    """A latency histogram exported through the python backend's metrics API, per window exact
    (Triton's own summaries remember about a minute, longer than a tuning trial).

    Measured from the client's send time when the request carries the parameter `slatune_sent_ns`
    (Unix nanoseconds, same host clock; label origin="client", includes queueing), else from the
    moment the model picked the request up (origin="model", excludes queueing). Servers slatune
    starts are traced too: the collector prefers the trace's server-side latency, which covers
    every request from its arrival (collectors/trace.py); these histograms serve servers it does
    not start, and time to first token."""

    def __init__(self, pb_utils: Any, name: str, description: str, model: str) -> None:
        # The family must outlive its metrics, so it is kept here with them.
        self.family = pb_utils.MetricFamily(
            name=name, description=description, kind=pb_utils.MetricFamily.HISTOGRAM
        )
        self.metrics = {
            origin: self.family.Metric(labels={"model": model, "origin": origin}, buckets=LATENCY_BUCKETS_MS)
            for origin in ("client", "model")
        }

    def observe(self, request: Any, picked_ns: int) -> None:
        now = time.time_ns()
        try:
            sent = int(json.loads(request.parameters()).get("slatune_sent_ns", 0))
        except (TypeError, ValueError):
            sent = 0
        if 0 < sent <= now and now - sent < MAX_CLOCK_SKEW_NS:
            self.metrics["client"].observe((now - sent) / 1e6)
        else:
            self.metrics["model"].observe((now - picked_ns) / 1e6)


def request_latency(pb_utils: Any, args: dict[str, Any]) -> LatencyHistogram:
    return LatencyHistogram(
        pb_utils,
        "slatune_request_ms",
        "Whole-request latency of a slatune built-in model, in milliseconds",
        args["model_name"],
    )
