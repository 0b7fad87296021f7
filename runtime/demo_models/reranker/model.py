"""Built-in demo reranker: query and document encoded together, scored from the first position."""

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
        self.max_tokens = support.int_param(p, "max_tokens", 256)
        d = support.int_param(p, "hidden", 256)
        self.encoder = Encoder.random(
            seed=13,
            vocab=self.vocab,
            d=d,
            ffn=support.int_param(p, "ffn", 1024),
            layers=support.int_param(p, "layers", 4),
        )
        self.head = np.random.default_rng(14).standard_normal(d).astype(np.float32) / np.sqrt(d)
        # Last: initializing at full speed shortens a reload (the serving version runs meanwhile).
        support.honour_compute_priority(args)

    def execute(self, requests):
        picked_ns = time.time_ns()
        pairs = [
            list(
                zip(support.texts(pb_utils, r, "QUERY"), support.texts(pb_utils, r, "DOCUMENT"), strict=True)
            )
            for r in requests
        ]
        flat = [tokenize(q + b" [SEP] " + d, self.vocab, self.max_tokens) for ps in pairs for q, d in ps]
        hidden = self.encoder.forward(*pad(flat))
        scores = (hidden[:, 0, :] @ self.head).astype(np.float32)
        # In the retrieval pipeline the embedder's query embedding arrives too (what retrieved the
        # documents): it nudges the score, so the step after the embedder reads its output.
        embedded = [pb_utils.get_input_tensor_by_name(r, "QUERY_EMBEDDING") for r in requests]
        if all(e is not None for e in embedded):
            nudge = np.concatenate([np.asarray(e.as_numpy(), dtype=np.float32) for e in embedded]).mean(
                axis=1
            )
            scores = scores + (0.01 * nudge).astype(np.float32)
        responses = support.split_responses(
            pb_utils, [len(ps) for ps in pairs], "SCORE", scores.reshape(-1, 1)
        )
        for request in requests:
            self.latency.observe(request, picked_ns)
        return responses
