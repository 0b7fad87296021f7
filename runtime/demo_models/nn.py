"""Small numpy networks for the built-in demo models.

They compute for real (no sleeping) so that co-located models contend for the cores the way real
models contend for a GPU: a transformer block's cost grows with batch size and sequence length
(attention quadratically), and a decoder's per-token step is a batched matrix product whose fixed
cost batching amortises. Weights are drawn from a fixed seed so every run computes the same thing.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

Array = np.ndarray


def tokenize(text: bytes | str, vocab: int, max_len: int) -> Array:
    """Word-level hashing tokenizer: the same text always gives the same ids."""
    if isinstance(text, str):
        text = text.encode()
    words = text.split()[:max_len] or [b""]
    return np.fromiter((zlib.crc32(w) % (vocab - 1) + 1 for w in words), dtype=np.int64)


def pad(seqs: list[Array]) -> tuple[Array, Array]:
    """Right-pad id sequences to one [B, L] array and return it with its [B, L] validity mask."""
    length = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), length), dtype=np.int64)
    mask = np.zeros((len(seqs), length), dtype=bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = True
    return ids, mask


def _norm(x: Array) -> Array:
    mu = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5)


def _gelu(x: Array) -> Array:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))


def _softmax(x: Array) -> Array:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Block:
    """One pre-norm transformer block (single head: the cost shape is what matters)."""

    wqkv: Array
    wo: Array
    w1: Array
    w2: Array

    @classmethod
    def random(cls, rng: np.random.Generator, d: int, ffn: int) -> Block:
        def w(i: int, o: int) -> Array:
            return (rng.standard_normal((i, o)) / np.sqrt(i)).astype(np.float32)

        return cls(w(d, 3 * d), w(d, d), w(d, ffn), w(ffn, d))

    def forward(
        self, x: Array, mask: Array | None = None, causal: bool = False
    ) -> tuple[Array, Array, Array]:
        """x: [B, L, d]. Returns the new x and this block's keys and values (for a decoder's cache)."""
        d = x.shape[-1]
        q, k, v = np.split(_norm(x) @ self.wqkv, 3, axis=-1)
        scores = (q @ k.transpose(0, 2, 1)) / np.sqrt(d)
        if mask is not None:
            scores = np.where(mask[:, None, :], scores, -1e9)
        if causal:
            length = x.shape[1]
            scores = np.where(np.tri(length, dtype=bool)[None], scores, -1e9)
        x = x + (_softmax(scores) @ v) @ self.wo
        x = x + _gelu(_norm(x) @ self.w1) @ self.w2
        return x.astype(np.float32), k, v

    def step(self, h: Array, caches: list[KVCache]) -> Array:
        """One decode step for B sequences: h [B, d]; each sequence attends over its own cache."""
        d = h.shape[-1]
        q, k, v = np.split(_norm(h) @ self.wqkv, 3, axis=-1)
        att = np.empty_like(h)
        for i, cache in enumerate(caches):
            keys, values = cache.append(k[i], v[i])
            weights = _softmax(keys @ q[i] / np.sqrt(d))
            att[i] = weights @ values
        h = h + att @ self.wo
        h = h + _gelu(_norm(h) @ self.w1) @ self.w2
        return h.astype(np.float32)


@dataclass
class KVCache:
    """Keys and values of one sequence in one block, preallocated for prompt + new tokens."""

    keys: Array
    values: Array
    length: int = 0

    @classmethod
    def from_prefill(cls, k: Array, v: Array, capacity: int) -> KVCache:
        d = k.shape[-1]
        cache = cls(np.zeros((capacity, d), np.float32), np.zeros((capacity, d), np.float32))
        cache.keys[: len(k)] = k
        cache.values[: len(v)] = v
        cache.length = len(k)
        return cache

    def append(self, k: Array, v: Array) -> tuple[Array, Array]:
        self.keys[self.length] = k
        self.values[self.length] = v
        self.length += 1
        return self.keys[: self.length], self.values[: self.length]


@dataclass
class Encoder:
    """Embedding table and transformer blocks: the body of the embedder, reranker and guard."""

    embed: Array
    blocks: list[Block] = field(default_factory=list)

    @classmethod
    def random(cls, seed: int, vocab: int, d: int, ffn: int, layers: int) -> Encoder:
        rng = np.random.default_rng(seed)
        embed = (rng.standard_normal((vocab, d)) * 0.5).astype(np.float32)
        return cls(embed, [Block.random(rng, d, ffn) for _ in range(layers)])

    def forward(self, ids: Array, mask: Array) -> Array:
        """ids, mask: [B, L] -> hidden states [B, L, d]."""
        x = self.embed[ids]
        for block in self.blocks:
            x, _, _ = block.forward(x, mask)
        return _norm(x)

    def pooled(self, ids: Array, mask: Array) -> Array:
        """Mean over valid positions, L2-normalised: [B, d]."""
        x = self.forward(ids, mask)
        m = mask[..., None].astype(np.float32)
        pooled = (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-6)


@dataclass
class Decoder:
    """A small causal language model: prefill a prompt, then decode tokens greedily, batched."""

    encoder: Encoder
    unembed: Array

    @classmethod
    def random(cls, seed: int, vocab: int, d: int, ffn: int, layers: int) -> Decoder:
        enc = Encoder.random(seed, vocab, d, ffn, layers)
        rng = np.random.default_rng(seed + 1)
        return cls(enc, (rng.standard_normal((d, vocab)) / np.sqrt(d)).astype(np.float32))

    def prefill(self, ids: Array, capacity: int) -> tuple[int, Array, list[KVCache]]:
        """Run the prompt (cost grows with its length, attention quadratically).
        Returns the first generated token, the last hidden state and the per-block caches."""
        x = self.encoder.embed[ids][None]
        caches = []
        for block in self.encoder.blocks:
            # The cache holds the keys/values each block saw, as the decode step appends them.
            x, k, v = block.forward(x, causal=True)
            caches.append(KVCache.from_prefill(k[0], v[0], capacity))
        h = _norm(x[0, -1])
        token = int(np.argmax(h @ self.unembed))
        return token, h, caches

    def step(self, tokens: Array, caches: list[list[KVCache]]) -> Array:
        """Decode one token for each of B sequences at once: tokens [B] -> next tokens [B]."""
        h = self.encoder.embed[tokens]
        for j, block in enumerate(self.encoder.blocks):
            h = block.step(h, [c[j] for c in caches])
        return np.argmax(_norm(h) @ self.unembed, axis=-1)
