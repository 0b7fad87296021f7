"""The vocabulary that generated prompts and warmup texts draw from."""

import numpy as np

WORDS = np.array(
    "the a model token query answer server latency request batch queue policy window rate fleet "
    "device memory instance priority budget prompt stream embed rank guard safe chat cost core "
    "delay config version trial score tune apply reload metric count sum bucket label value".split()
)
