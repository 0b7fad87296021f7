"""What the built-in demo models share: reading config parameters and batched text inputs."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def parameters(args: dict[str, Any]) -> dict[str, str]:
    """The string parameters of the model's config.pbtxt, from the backend's initialize args."""
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


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


def split_responses(pb_utils: Any, counts: list[int], name: str, values: np.ndarray) -> list[Any]:
    """One response per request from a batch computed together: request i gets the next counts[i] rows."""
    out, start = [], 0
    for n in counts:
        out.append(pb_utils.InferenceResponse([pb_utils.Tensor(name, values[start : start + n])]))
        start += n
    return out
