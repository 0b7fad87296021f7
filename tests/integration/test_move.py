"""Moving a model between devices of a running fleet (`Fleet.move`): loaded on the target first,
served on both while clients switch, unloaded from the source; the model is ready on at least one
server at every moment, and a client that follows the fleet's state never fails a request."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from domain.spec import resolve_spec
from runtime.fleet import Fleet, ReconfigurationError, read_state

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not {0, 1} <= os.sched_getaffinity(0), reason="the two-server fleet pins its servers to cores 0 and 1"
    ),
]


def _guard_request() -> list[grpcclient.InferInput]:
    text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"is this prompt safe to answer"]], dtype=object))
    return [text]


def test_a_model_moves_between_servers_without_a_gap(tmp_path: Path) -> None:
    spec = resolve_spec("two-server")
    with Fleet(spec, tmp_path) as fleet:
        grpc = {s: fleet.endpoints(s).grpc for s in ("triton0", "triton1")}
        knobs = fleet.knobs("safety-guard")
        stop = threading.Event()
        ready: list[tuple[bool, bool]] = []
        sent, failed = [0], [0]

        def watch() -> None:  # readiness on both servers, every 50 ms
            clients = {s: grpcclient.InferenceServerClient(u) for s, u in grpc.items()}
            while not stop.is_set():
                ready.append(tuple(clients[s].is_model_ready("safety-guard") for s in ("triton0", "triton1")))  # type: ignore[arg-type]
                time.sleep(0.05)

        def follow() -> None:  # a client that asks the fleet where the model answers, per request
            while not stop.is_set():
                client = grpcclient.InferenceServerClient(fleet.model_endpoints("safety-guard").grpc)
                try:
                    client.infer("safety-guard", _guard_request(), client_timeout=10)
                except InferenceServerException:
                    failed[0] += 1
                sent[0] += 1
                client.close()
                time.sleep(0.05)

        threads = [threading.Thread(target=watch), threading.Thread(target=follow)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        try:
            result = fleet.move("safety-guard", "triton1", "dev1", overlap_s=1.0)
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert (result.from_server, result.to_server, result.to_device) == ("triton0", "triton1", "dev1")
        assert result.both_serving_s >= 1.0
        assert ready[0] == (True, False) and ready[-1] == (False, True)
        assert (True, True) in ready  # both served while clients switched
        assert all(a or b for a, b in ready), "a moment with the model ready nowhere"
        assert sent[0] > 20 and failed[0] == 0
        # The target runs it as it ran, the fleet and its state file say where, the source forgot it.
        assert fleet.knobs("safety-guard") == knobs and fleet.spec.model("safety-guard").server == "triton1"
        assert read_state(tmp_path).spec.model("safety-guard").device == "dev1"
        assert not (tmp_path / "repositories" / "triton0" / "safety-guard").exists()
        out = grpcclient.InferenceServerClient(grpc["triton1"]).infer("safety-guard", _guard_request())
        assert out.as_numpy("UNSAFE_PROB").shape == (1, 1)
        with pytest.raises(ReconfigurationError, match="already on server 'triton1'"):
            fleet.move("safety-guard", "triton1", "dev1")
        with pytest.raises(ReconfigurationError, match="unknown server 'nowhere'"):
            fleet.move("safety-guard", "nowhere", "dev1")
        with pytest.raises(ReconfigurationError, match="cannot move to triton1/dev0"):
            fleet.move("embeddings", "triton1", "dev0")  # dev0's core is triton0's: the spec refuses it
