"""Built-in demo safety guard: a one-block encoder and a logistic head."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime.demo_models import support
from runtime.demo_models.nn import Encoder, pad, tokenize


class TritonPythonModel:
    def initialize(self, args):
        self.latency = support.request_latency(pb_utils, args)
        p = support.parameters(args)
        self.vocab = support.int_param(p, "vocab", 8192)
        self.max_tokens = support.int_param(p, "max_tokens", 64)
        d = support.int_param(p, "hidden", 128)
        self.encoder = Encoder.random(
            seed=17,
            vocab=self.vocab,
            d=d,
            ffn=support.int_param(p, "ffn", 256),
            layers=support.int_param(p, "layers", 1),
        )
        self.head = np.random.default_rng(18).standard_normal(d).astype(np.float32)
        # Time each execution spends on a simulated accelerator, the host's cores free meanwhile (0:
        # none). The pipeline fleet sets it so that, as on a GPU, a step is bound by its instances
        # (one execution each at a time) rather than by the host's two cores.
        self.device_s = float(p.get("device_ms", "0")) / 1000.0
        # Last: initializing at full speed shortens a reload (the serving version runs meanwhile).
        support.honour_compute_priority(args)

    def execute(self, requests):
        picked_ns = time.time_ns()
        per_request = [support.texts(pb_utils, r, "TEXT") for r in requests]
        flat = [tokenize(t, self.vocab, self.max_tokens) for texts in per_request for t in texts]
        logits = self.encoder.pooled(*pad(flat)) @ self.head
        probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        if self.device_s > 0:
            time.sleep(self.device_s)
        responses = support.split_responses(
            pb_utils, [len(t) for t in per_request], "UNSAFE_PROB", probs.reshape(-1, 1)
        )
        for request in requests:
            self.latency.observe(request, picked_ns)
        return responses
