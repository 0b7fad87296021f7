"""Built-in demo chat model: prefill the prompt, stream one response per generated token.

Requests batched together by Triton are prefilled one by one (each sends its first token as soon as
its prefill is done) and then decoded together, one batched step per token. Time to first token is
exported as the histogram `slatune_ttft_ms` through the python backend's metrics API, because Triton
2.51 has no first-response histogram of its own; whole-stream latency as `slatune_request_ms`. See
`support.LatencyHistogram` for where each is measured from.
"""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime.demo_models import support
from runtime.demo_models.nn import Decoder, tokenize

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        p = support.parameters(args)
        self.vocab = support.int_param(p, "vocab", 4096)
        self.max_prompt = support.int_param(p, "max_prompt_tokens", 512)
        self.max_new = support.int_param(p, "max_new_tokens", 64)
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

    def execute(self, requests):
        picked_ns = time.time_ns()
        live = []  # (sender, tokens left, caches, last token)
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt = support.texts(pb_utils, request, "PROMPT")[0]
                budget = support.optional_int(pb_utils, request, "MAX_TOKENS", 16)
                if not 1 <= budget <= self.max_new:
                    raise ValueError(f"MAX_TOKENS must be within 1..{self.max_new}, got {budget}")
            except ValueError as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)
                continue
            ids = tokenize(prompt, self.vocab, self.max_prompt)
            token, _, caches = self.model.prefill(ids, capacity=len(ids) + budget)
            self.ttft.observe(request, picked_ns)
            flags = FINAL if budget == 1 else 0
            sender.send(_token_response(token), flags=flags)
            if budget == 1:
                self.latency.observe(request, picked_ns)
            else:
                live.append([sender, budget - 1, caches, token, request])
        while live:
            tokens = np.array([s[3] for s in live])
            nxt = self.model.step(tokens, [s[2] for s in live])
            for state, token in zip(live, nxt, strict=True):
                state[1] -= 1
                state[3] = int(token)
                state[0].send(_token_response(int(token)), flags=FINAL if state[1] == 0 else 0)
                if state[1] == 0:
                    self.latency.observe(state[4], picked_ns)
            live = [s for s in live if s[1] > 0]
        return None


def _token_response(token):
    out = pb_utils.Tensor("TOKEN", np.array([token], dtype=np.int32))
    return pb_utils.InferenceResponse(output_tensors=[out])
