"""Built-in demo chat model: in-flight batching, as the TensorRT-LLM backend does it.

`execute` only hands its requests to the model's generation loop and returns, so the Triton
instance is free for the next request at once (decoupled: the responses are sent later). The loop
runs on its own thread: each turn it admits the requests that arrived (prefilling each and sending
its first token as soon as its prefill is done), then decodes one token for every live sequence in
one batched step. A request that arrives mid-generation therefore waits for one decode step, not
for the whole generation of the requests before it, which is how an in-flight batching server
keeps time to first token low under load (and why Triton runs TensorRT-LLM with one instance).

Time to first token is exported as the histogram `slatune_ttft_ms` through the python backend's
metrics API, because Triton 2.51 has no first-response histogram of its own; whole-stream latency as
`slatune_request_ms`. See `support.LatencyHistogram` for where each is measured from.
"""

import queue
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime.demo_models import support
from runtime.demo_models.nn import Decoder, tokenize

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
REFUSED = -1
"""The one token a refused prompt gets."""


class _Sequence:
    __slots__ = ("caches", "ids", "left", "picked_ns", "request", "sender", "token")

    def __init__(self, sender, request, picked_ns, ids, budget):
        self.sender, self.request, self.picked_ns = sender, request, picked_ns
        self.ids, self.left = ids, budget
        self.caches = None
        self.token = 0


class TritonPythonModel:
    def initialize(self, args):
        p = support.parameters(args)
        self.vocab = support.int_param(p, "vocab", 4096)
        self.max_prompt = support.int_param(p, "max_prompt_tokens", 512)
        self.max_new = support.int_param(p, "max_new_tokens", 64)
        self.max_inflight = support.int_param(p, "max_inflight", 16)
        # In a pipeline, the safety guard's verdict arrives as GATE: a prompt it judges unsafe
        # above this probability is refused at once (one token, no generation): the demo guard scores
        # random prompts 0.58 to 0.95 (median 0.80), so 0.9 refuses about one in fifteen.
        self.refuse_above = float(p.get("refuse_above", "0.9"))
        self.model = Decoder.random(
            seed=7,
            vocab=self.vocab,
            d=support.int_param(p, "hidden", 256),
            ffn=support.int_param(p, "ffn", 1024),
            layers=support.int_param(p, "layers", 4),
        )
        self.ttft = support.LatencyHistogram(
            pb_utils,
            "slatune_ttft_ms",
            "Time to first token of a streaming model, in milliseconds",
            args["model_name"],
        )
        self.latency = support.request_latency(pb_utils, args)
        self.arrivals = queue.Queue()
        self.stopping = threading.Event()
        self.loop = threading.Thread(target=self._generate, name="inflight", daemon=True)
        self.loop.start()
        # Last: initializing at full speed shortens a reload (the serving version runs meanwhile).
        support.honour_compute_priority(args)

    def execute(self, requests):
        picked_ns = time.time_ns()
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt = support.texts(pb_utils, request, "PROMPT")[0]
                budget = support.optional_int(pb_utils, request, "MAX_TOKENS", 16)
                if not 1 <= budget <= self.max_new:
                    raise ValueError(f"MAX_TOKENS must be within 1..{self.max_new}, got {budget}")
                gate = support.optional_float(pb_utils, request, "GATE")
            except ValueError as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)
                continue
            if gate is not None and gate > self.refuse_above:
                # Refused: one token, sent by the generation loop like every other (two threads
                # sending on the python backend's response senders at once crash the server).
                self.arrivals.put(_Sequence(sender, request, picked_ns, None, 1))
                continue
            ids = tokenize(prompt, self.vocab, self.max_prompt)
            self.arrivals.put(_Sequence(sender, request, picked_ns, ids, budget))
        return None

    def _generate(self):
        live = []
        while not self.stopping.is_set():
            # Admit what arrived: block only when there is nothing to decode.
            while len(live) < self.max_inflight:
                try:
                    seq = self.arrivals.get(timeout=0.05) if not live else self.arrivals.get_nowait()
                except queue.Empty:
                    break
                if seq.ids is None:  # refused by the guard before it
                    self.ttft.observe(seq.request, seq.picked_ns)
                    self._send(seq, REFUSED)
                    continue
                token, _, seq.caches = self.model.prefill(seq.ids, capacity=len(seq.ids) + seq.left)
                self.ttft.observe(seq.request, seq.picked_ns)
                self._send(seq, token)
                if seq.left > 0:
                    live.append(seq)
            if not live:
                continue
            nxt = self.model.step(np.array([s.token for s in live]), [s.caches for s in live])
            for seq, token in zip(live, nxt, strict=True):
                self._send(seq, int(token))
            live = [s for s in live if s.left > 0]

    def _send(self, seq, token):
        seq.left -= 1
        seq.token = token
        out = pb_utils.Tensor("TOKEN", np.array([token], dtype=np.int32))
        seq.sender.send(pb_utils.InferenceResponse(output_tensors=[out]), flags=FINAL if seq.left == 0 else 0)
        if seq.left == 0:
            self.latency.observe(seq.request, seq.picked_ns)

    def finalize(self):
        self.stopping.set()
        self.loop.join(timeout=5)
