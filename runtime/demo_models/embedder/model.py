"""Built-in demo embedder: every text in the batch encoded in one padded forward pass."""

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
        self.max_tokens = support.int_param(p, "max_tokens", 128)
        self.encoder = Encoder.random(
            seed=11,
            vocab=self.vocab,
            d=support.int_param(p, "hidden", 256),
            ffn=support.int_param(p, "ffn", 1024),
            layers=support.int_param(p, "layers", 3),
        )
        # Last: initializing at full speed shortens a reload (the serving version runs meanwhile).
        support.honour_compute_priority(args)

    def execute(self, requests):
        picked_ns = time.time_ns()
        per_request = [support.texts(pb_utils, r, "TEXT") for r in requests]
        flat = [tokenize(t, self.vocab, self.max_tokens) for texts in per_request for t in texts]
        vectors = self.encoder.pooled(*pad(flat))
        responses = support.split_responses(
            pb_utils, [len(t) for t in per_request], "EMBEDDING", vectors.astype(np.float32)
        )
        for request in requests:
            self.latency.observe(request, picked_ns)
        return responses
