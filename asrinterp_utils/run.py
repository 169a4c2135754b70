"""Running Whisper: the one place where the package encodes, decodes greedily and teacher-forces.

Every method above this module (lenses, probes, patching, mining loops, extraction, the chapters) runs Whisper
through these three calls, as openai/whisper's ``decoding.py`` serves its ``model.py``::

    enc = encode(lm, clips)                       # Encoded: features, n_frames (B,), states (B, 1500, d_model)
    out = greedy(lm, enc.states)                  # Decoded: ids (B, prompt + steps), text_ids, hit_limit
    logits = teacher_force(lm, enc.states, out.ids)  # (B, tokens, vocab)

What they share:

* **Attention.** SDPA (PyTorch's fused attention) unless a hook reads an attention pattern, which only eager attention
  computes; the model's own setting is restored afterwards. The decoder's cross-attention is two batched matrix
  products over keys and values laid out frame-minor (below), which read them at memory speed.
* **Cross-attention keys and values projected once.** The decoder's cross-attention reads a projection of the
  encoder output, which does not change from step to step or from one patched copy of a clip to the next. The
  decoding batch therefore holds *distinct* encoder outputs ``states (n_states, frames, d_model)`` and a routing
  ``kv_rows (rows,)``: decoder row ``r`` reads ``states[kv_rows[r]]``. K patched copies of B clips are ``K * B`` rows
  reading B states; nothing is copied K times (an attention function folds the copies into the query axis, so the
  arithmetic is that of separate batches). The projections are written straight into ``(n_states, heads, d_head,
  frames)`` storage (:func:`cross_attention_kv`), with no transposed copy.
* **Rows that follow other rows.** ``follow[r]`` is the row whose chosen token row ``r`` is fed. A reference row (the
  same model on white noise, fed the patched row's tokens, see :func:`asrinterp_utils.patching.generate_sweep`)
  follows its patched row and ends with it; only rows that lead get logits.
* **Rows that end leave the batch**, with their followers, their keys and values, and their interventions (which are
  re-attached with the remaining rows renumbered), so a batch of short and looping rows costs what its running rows
  cost.
* **Whisper's rules** for short-form English decoding without timestamps: the generation config's
  ``suppress_tokens`` at every step, ``begin_suppress_tokens`` at the first, and the timestamp tokens (which
  ``<|notimestamps|>`` rules out; early encoder layers can otherwise make the decoder emit them).

Rows never read each other, whatever the batch size and however rows are grouped, and get the same tokens as
alone (tests assert it against Hugging Face ``generate`` and against one row at a time) up to float rounding: the
BLAS kernels differ with a product's shape, so a near-tie between two tokens can go either way. Seen once, in a
base head sweep over 13 of chapter 8's loops on one thread: one row of 624 looped when decoded among 256 rows, and
ended after 6 tokens alone, in the naive loop and among 1,024 or more.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from .hooks import (Intervention, _absolute_positions, _index_list, active_hook_count, hf_model, patch,
                    pattern_hook_sides, resolve_hook_points, whisper_core)
from .runtime import check_whole

__all__ = ["Encoded", "Decoded", "encode", "encode_features", "greedy", "teacher_force", "generate_ids", "transcribe",
           "cross_attention_kv", "attention_for", "attention_mode", "text_of"]


# ---------------------------------------------------------------------------------------------------------------
# Attention: SDPA or eager, with cross-attention rows routed to shared keys and values
# ---------------------------------------------------------------------------------------------------------------

_ROUTE: contextvars.ContextVar["_Route | None"] = contextvars.ContextVar("asrinterp_route", default=None)
_ROUTED = {"sdpa": "asrinterp_routed_sdpa", "eager": "asrinterp_routed_eager"}
_registered = False


class _Route:
    """Which key/value row each query row of the cross-attention reads: ``kv_rows (rows,)`` into ``n_kv`` rows.

    The rows reading one key row are folded into its query axis: queries ``(rows, heads, T, d)`` become ``(n, heads,
    width * T, d)`` for a run of ``n`` consecutive key rows, padded to the largest group in the run (``width``),
    attended, and unfolded. Padded query slots are zero and their outputs are dropped. Key rows whose groups differ
    in size are split into runs (:func:`_runs`), so that a key row read by one query row is not padded to the width
    of one read by twelve; the runs are slices of the keys and values, which are never copied.
    """

    def __init__(self, kv_rows: torch.Tensor, n_kv: int) -> None:
        device, kv_rows = kv_rows.device, kv_rows.long().cpu()
        self.n_rows, self.n_kv = len(kv_rows), n_kv
        self.identity = self.n_rows == n_kv and bool(torch.equal(kv_rows, torch.arange(n_kv)))
        counts = torch.bincount(kv_rows, minlength=n_kv)
        order = torch.argsort(kv_rows, stable=True)
        rank = torch.empty_like(order)  # each row's place among the rows reading the same key row
        rank[order] = torch.arange(len(order)) - (torch.cumsum(counts, 0) - counts)[kv_rows[order]]
        self.runs = []  # (first key row, end, width, query rows in the run, their padded slots)
        for start, end in _runs(counts.tolist()):
            rows = torch.nonzero((kv_rows >= start) & (kv_rows < end)).squeeze(1)
            width = int(counts[start:end].max())
            slot = (kv_rows[rows] - start) * width + rank[rows]
            self.runs.append((start, end, width, rows.to(device), slot.to(device)))

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None,
               eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``query (rows, heads, T, d)``, ``key``/``value (n_kv, heads, frames, d)`` -> ``(rows, T, heads, d)`` and,
        for eager attention, the probabilities ``(rows, heads, T, frames)``."""
        scale = 1.0 if scaling is None else scaling
        if len(self.runs) == 1:  # every query row in one run, in order: no gathering or scattering
            start, end, width, _, slot = self.runs[0]
            return _folded_attention(query, key[start:end], value[start:end], width, slot, scale, eager)
        rows, heads, tokens, d_head = query.shape
        out = query.new_empty(rows, tokens, heads, d_head)
        weights = query.new_empty(rows, heads, tokens, key.shape[2]) if eager else None
        for start, end, width, run_rows, slot in self.runs:
            o, w = _folded_attention(query[run_rows], key[start:end], value[start:end], width, slot, scale, eager)
            out[run_rows] = o
            if eager:
                weights[run_rows] = w
        return out, weights


def _folded_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, width: int, slot: torch.Tensor,
                      scale: float, eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One run of :class:`_Route`: ``query (rows, heads, T, d)`` placed at ``slot`` among ``width`` query slots per
    key row, attended over ``key``/``value (n_kv, heads, frames, d)``; returns ``(rows, T, heads, d)`` and, when
    ``eager``, the probabilities ``(rows, heads, T, frames)``."""
    _, heads, tokens, d_head = query.shape
    n_kv = key.shape[0]
    padded = query.new_zeros(n_kv * width, heads, tokens, d_head)
    padded[slot] = query
    q = padded.view(n_kv, width, heads, tokens, d_head).transpose(1, 2).reshape(n_kv, heads, width * tokens, d_head)
    out, weights = _cross_attention(q, key, value, scale, eager)
    if weights is not None:
        weights = (weights.view(n_kv, heads, width, tokens, -1).transpose(1, 2)
                   .reshape(n_kv * width, heads, tokens, -1)[slot])
    out = out.view(n_kv, heads, width, tokens, d_head).permute(0, 2, 3, 1, 4).reshape(n_kv * width, tokens, heads,
                                                                                     d_head)
    return out[slot], weights


def _runs(counts: list[int]) -> list[tuple[int, int]]:
    """Split key rows ``0..len(counts)`` (``counts[i]``: the query rows reading key row ``i``) into runs of
    consecutive rows, each attended as one padded batch, minimising the estimated cost: per run
    :data:`RUN_COST`, per key row :data:`KEY_ROW_COST` plus the run's width (in units of one query row's cost).
    A key row read by no query row is left out where that is cheaper (between runs, or before or after all of them)."""
    n = len(counts)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of rows 0..j
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        if counts[j - 1] == 0:  # an unread row left out of every run costs nothing
            best[j], cut[j] = best[j - 1], -1
        width = 0
        for i in range(j - 1, -1, -1):
            width = max(width, counts[i])
            cost = best[i] + RUN_COST + (j - i) * (KEY_ROW_COST + width)
            if width and cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], n
    while j > 0:
        if cut[j] == -1:
            j -= 1
            continue
        runs.append((cut[j], j))
        j = cut[j]
    return runs[::-1]


RUN_COST = 8.0
"""The cost of one more run (the calls and copies of one more attention), in units of one query row's share of a run
(:func:`_runs`)."""

KEY_ROW_COST = 8.0
"""The cost of reading one key/value row, in the same units. Measured on this book's 2-core CPU for tiny.en's
cross-attention (6 heads, 1500 frames, the two batched products of :func:`_cross_attention` over keys and values
that do not fit in its cache): about 0.15 ms per key row plus 0.017 ms per query row folded onto it. The decoding
time of the patched-generation benchmark was the same, to within its noise, with 24 and 6 for the two constants."""


def _routed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *, eager: bool,
                      **kwargs):
    """The attention function of :func:`attention_for`: cross-attention under an active route folds rows onto
    their key/value rows, and any cross-attention goes through :func:`_cross_attention` (which reads frame-minor
    keys and values in memory order); self-attention is Hugging Face's eager or SDPA attention, unchanged."""
    route = _ROUTE.get()
    cross = getattr(module, "_asrinterp_cross", False)
    if route is not None and not route.identity and cross:
        if attention_mask is not None:
            raise RuntimeError("routed cross-attention reads every encoder frame; it takes no attention mask")
        if query.shape[0] != route.n_rows or key.shape[0] != route.n_kv:
            raise RuntimeError(f"routed cross-attention expected {route.n_rows} query rows over {route.n_kv} "
                               f"key rows, got {query.shape[0]} over {key.shape[0]}")
        return route.attend(query, key, value, scaling, eager)
    if cross and attention_mask is None and not (module.training and dropout):
        out, weights = _cross_attention(query, key, value, 1.0 if scaling is None else scaling, eager)
        return out.transpose(1, 2).contiguous(), weights
    if eager:
        from transformers.models.whisper.modeling_whisper import eager_attention_forward

        return eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                  **kwargs)


def _cross_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                     eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-attention of ``query (b, heads, T, d)`` over ``key``/``value (b, heads, frames, d)`` -> ``(b, heads, T,
    d)`` and, when ``eager``, the probabilities ``(b, heads, T, frames)``.

    Keys and values laid out frame-minor (``(b, heads, frames, d)`` views of ``(b, heads, d, frames)`` storage, as
    :func:`cross_attention_kv` makes them for greedy decoding) are read by two batched matrix products, in the order
    they lie in memory: with a few queries per row this runs at memory speed, where PyTorch's fused CPU attention
    kernel runs well below it (1.9 ms against 7.6 ms for 8 rows of base at one query each on this book's 2-core CPU).
    Contiguous keys and values (teacher forcing: many queries per row) go to the fused kernel, which is faster there
    (8.6 ms against 12.5 ms at 384 queries). The values agree to float rounding."""
    if not eager and key.is_contiguous() and value.is_contiguous():
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=scale), None
    weights = torch.softmax(torch.matmul(query * scale if scale != 1.0 else query, key.transpose(2, 3)), dim=-1)
    return torch.matmul(weights, value), weights if eager else None


def _register() -> None:
    """Register the routed attention functions with transformers, once, on first use."""
    global _registered
    if _registered:
        return
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(_ROUTED["eager"], functools.partial(_routed_attention, eager=True))
    AttentionInterface.register(_ROUTED["sdpa"], functools.partial(_routed_attention, eager=False))
    AttentionMaskInterface.register(_ROUTED["eager"], eager_mask)
    AttentionMaskInterface.register(_ROUTED["sdpa"], sdpa_mask)
    _registered = True


def _mark_cross_attention(core: torch.nn.Module) -> None:
    for layer in core.decoder.layers:
        layer.encoder_attn._asrinterp_cross = True


def attention_for(model: Any, side: str) -> str:
    """``"eager"`` when a hook of this package reads an attention pattern on ``side`` (``"enc"`` or ``"dec"``):
    only eager attention computes the probabilities; ``"sdpa"`` otherwise."""
    return "eager" if side in pattern_hook_sides(model) else "sdpa"


@contextlib.contextmanager
def attention_mode(model: Any, side: str, kv_rows: torch.Tensor | None = None, n_kv: int = 0) -> Iterator[None]:
    """Within the block, ``side``'s attention is SDPA or eager (:func:`attention_for`), and on the decoder side the
    cross-attention is routed by ``kv_rows``; the model's own setting is restored on exit."""
    core = whisper_core(model)
    config = core.config
    kind = attention_for(model, side)
    saved = config._attn_implementation
    token = None
    if side == "dec":
        _register()
        _mark_cross_attention(core)
        kind = _ROUTED[kind]
        if kv_rows is not None:
            token = _ROUTE.set(_Route(kv_rows, n_kv))
    config._attn_implementation = kind
    try:
        yield
    finally:
        config._attn_implementation = saved
        if token is not None:
            _ROUTE.reset(token)


# ---------------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Encoded:
    """Clips through the encoder.

    Attributes:
        features: log-mel ``(batch, n_mels, 3000)``, on the model's device and dtype.
        n_frames: ``LongTensor (batch,)``: the encoder frames (of 1500, 20 ms each) that hold real audio.
        states: the encoder output ``(batch, 1500, d_model)`` (after the final LayerNorm): what the decoder reads.
    """

    features: torch.Tensor
    n_frames: torch.Tensor
    states: torch.Tensor

    def __len__(self) -> int:
        return len(self.states)

    def select(self, rows: Sequence[int] | torch.Tensor) -> "Encoded":
        """The clips ``rows``, in that order."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return Encoded(self.features[index.to(self.features.device)], self.n_frames[index],
                       self.states[index.to(self.states.device)])


class _EncoderStopped(Exception):
    """Raised by the hook that ends a truncated encoder pass; carries the residual stream it stopped at."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__("encoder pass stopped early")
        self.hidden = hidden


@contextlib.contextmanager
def _stop_after(layer: torch.nn.Module) -> Iterator[None]:
    """Inside the block, a forward through ``layer`` raises :class:`_EncoderStopped` with its output. The hook is
    registered last, so the hooks of this package on that layer (caches, patches) have run when it fires."""
    def stop(module, args, output):
        raise _EncoderStopped(output[0] if isinstance(output, tuple) else output)

    handle = layer.register_forward_hook(stop)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def encode_features(model: Any, features: torch.Tensor, *, patches: Mapping[str, Any] | None = None,
                    batch_size: int = 16, stop_at_layer: int | None = None) -> torch.Tensor:
    """The encoder output ``(batch, 1500, d_model)`` of log-mel ``features (batch, n_mels, 3000)``, in batches of
    ``batch_size``, with ``patches`` (hook-point name -> intervention, as :func:`asrinterp_utils.hooks.patch`)
    applied. SDPA attention unless a hook reads an encoder pattern. With a hook of this package attached outside
    (a cache records this call) or a patch tied to rows, the batch runs as one call.

    ``stop_at_layer=L`` runs only encoder layers ``0 .. L-1`` and returns ``enc.{L-1}.resid_post`` (no final
    LayerNorm), for a pass whose only use is a cache of early points: a reference run whose patch source lies in
    layer 1 of 6 costs a third of a full pass. Hooks on later points do not fire."""
    core = whisper_core(model)
    n_layers = len(core.encoder.layers)
    if stop_at_layer is not None and (isinstance(stop_at_layer, bool) or not isinstance(stop_at_layer, int)
                                      or not 1 <= stop_at_layer <= n_layers):
        raise ValueError(f"stop_at_layer must be a whole number of encoder layers from 1 to {n_layers} (or None for "
                         f"the whole encoder); got {stop_at_layer!r}")
    param = next(core.parameters())
    n_mels, n_frames = int(core.config.num_mel_bins), 2 * int(core.config.max_source_positions)
    if not isinstance(features, torch.Tensor) or features.ndim != 3 or tuple(features.shape[1:]) != (n_mels, n_frames):
        shape = tuple(features.shape) if hasattr(features, "shape") else type(features).__name__
        raise ValueError(f"features must be log-mel (batch, {n_mels}, {n_frames}) for this model, as "
                         f"lm.features(clips) gives them; got {shape}")
    batch_size = check_whole(batch_size, "batch_size", 1)
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"features hold {int((~torch.isfinite(features)).sum())} non-finite values (NaN or inf); "
                         "compute them with lm.features(clips), which checks the audio.")
    features = features.to(device=param.device, dtype=param.dtype)
    if active_hook_count(model) or any(_tied_to_rows(ivs) for ivs in (patches or {}).values()):
        batch_size = max(1, len(features))  # a cache outside stitches calls by position; row-tied patches need rows
    outs = []
    with attention_mode(model, "enc"), patch(model, patches or {}), (
            _stop_after(core.encoder.layers[stop_at_layer - 1]) if stop_at_layer else contextlib.nullcontext()):
        for start in range(0, len(features), batch_size):
            try:
                outs.append(core.encoder(features[start:start + batch_size]).last_hidden_state)
            except _EncoderStopped as stopped:
                outs.append(stopped.hidden)
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def _tied_to_rows(ivs: Any) -> bool:
    """Whether an intervention (or a list of them) is tied to batch rows."""
    ivs = ivs if isinstance(ivs, (list, tuple)) else [ivs]
    return any(isinstance(iv, Intervention) and (iv.rows is not None or iv.mode == "from_rows") for iv in ivs)


@torch.no_grad()
def encode(lm: Any, clips: Sequence[np.ndarray], *, patches: Mapping[str, Any] | None = None,
           batch_size: int = 16) -> Encoded:
    """Log-mel features, real frame counts and encoder output of ``clips`` (1-D float32 arrays at 16 kHz, at most
    30 s each): :class:`Encoded`. The encoder runs in batches of ``batch_size`` clips."""
    features, n_frames = lm.features(list(clips))
    return Encoded(features, n_frames, encode_features(lm, features, patches=patches, batch_size=batch_size))


# ---------------------------------------------------------------------------------------------------------------
# Cross-attention keys and values
# ---------------------------------------------------------------------------------------------------------------

def cross_attention_kv(model: Any, states: torch.Tensor, *, frame_minor: bool = True):
    """Project the encoder output ``states (n_states, frames, d_model)`` to every decoder layer's cross-attention
    keys and values, ``(n_states, heads, frames, d_head)`` each, as a transformers ``DynamicCache`` that the
    decoder reads instead of recomputing them.

    ``frame_minor`` (for greedy decoding, a few queries per row and step): each is a view of storage laid out
    ``(n_states, heads, d_head, frames)``, computed as ``bias + weight @ states[i].T`` clip by clip straight into
    that storage (``linear`` followed by ``.transpose(1, 2).contiguous()``, or a batched ``matmul``, which transposes
    internally, copies tens of MB per layer once more), and read in memory order by :func:`_cross_attention`.
    Otherwise (teacher forcing, many queries per row) contiguous ``(n_states, heads, frames, d_head)`` for the fused
    attention kernel. The values are those of the layer's ``k_proj``/``v_proj`` to float rounding."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    core = whisper_core(model)
    cross = DynamicCache()
    by_frame = states.transpose(1, 2)  # (n_states, d_model, frames): a view
    n_states, n_frames = len(states), states.shape[1]
    for layer in core.decoder.layers:
        attn = layer.encoder_attn
        if not frame_minor:
            shape = (n_states, -1, attn.num_heads, attn.head_dim)
            held = DynamicLayer()
            keys = attn.k_proj(states).view(shape).transpose(1, 2).contiguous()
            values = attn.v_proj(states).view(shape).transpose(1, 2).contiguous()
            held.lazy_initialization(keys, values)
            held.keys, held.values = keys, values  # as computed: DynamicLayer.update would copy them once more
            cross.layers.append(held)
            continue
        projected = []
        for proj in (attn.k_proj, attn.v_proj):
            out = states.new_empty(n_states, proj.out_features, n_frames)  # (n_states, heads * d_head, frames)
            for i in range(n_states):
                if proj.bias is None:
                    torch.mm(proj.weight, by_frame[i], out=out[i])
                else:
                    torch.addmm(proj.bias[:, None], proj.weight, by_frame[i], out=out[i])
            projected.append(out.view(n_states, attn.num_heads, attn.head_dim, n_frames))
        cross.layers.append(_cross_layer_class()(*projected))
    return cross


@functools.lru_cache(maxsize=None)
def _cross_layer_class() -> type:
    """A transformers cache layer holding one decoder layer's cross-attention keys and values as
    ``(rows, heads, frames, d_head)`` views of ``(rows, heads, d_head, frames)`` storage (:func:`cross_attention_kv`);
    selecting batch rows keeps that layout."""
    from transformers.cache_utils import DynamicLayer

    class CrossAttentionLayer(DynamicLayer):
        is_croppable = False

        def __init__(self, keys_by_frame: torch.Tensor, values_by_frame: torch.Tensor) -> None:
            super().__init__()
            self.device = keys_by_frame.device
            self._hold(keys_by_frame, values_by_frame)

        def _hold(self, keys_by_frame: torch.Tensor, values_by_frame: torch.Tensor) -> None:
            self._keys_by_frame, self._values_by_frame = keys_by_frame, values_by_frame
            self.keys, self.values = keys_by_frame.transpose(2, 3), values_by_frame.transpose(2, 3)
            self.is_initialized = True

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            raise RuntimeError("cross-attention keys and values are projected once, by cross_attention_kv")

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            raise RuntimeError("cross-attention keys and values are projected once, by cross_attention_kv")

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._hold(self._keys_by_frame.index_select(0, indices), self._values_by_frame.index_select(0, indices))

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._hold(self._keys_by_frame.repeat_interleave(repeats, dim=0),
                       self._values_by_frame.repeat_interleave(repeats, dim=0))

    return CrossAttentionLayer


@functools.lru_cache(maxsize=None)
def _preallocated_layer_class() -> type:
    """A transformers self-attention cache layer that writes each step's keys and values into storage for
    ``capacity`` positions, allocated at the first step, instead of concatenating the whole cache anew at every step
    (which copies ``rows x heads x positions x d_head`` floats per layer and step). It holds ``keys``/``values`` as
    views ``(rows, heads, positions so far, d_head)`` of that storage; it grows by doubling past ``capacity``."""
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def __init__(self, capacity: int) -> None:
            super().__init__()
            self.capacity, self._length = int(capacity), 0

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.device = key_states.device
            rows, heads, _, d_head = key_states.shape
            self._keys = key_states.new_empty(rows, heads, self.capacity, d_head)
            self._values = value_states.new_empty(rows, heads, self.capacity, d_head)
            self.keys, self.values = self._keys[:, :, :0], self._values[:, :, :0]
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start, end = self._length, self._length + key_states.shape[-2]
            if end > self._keys.shape[2]:
                self._copy(torch.arange(len(self._keys), device=self.device), max(end, 2 * self._keys.shape[2]))
            self._keys[:, :, start:end] = key_states
            self._values[:, :, start:end] = value_states
            self._length = end
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
            return self.keys, self.values

        def _copy(self, rows: torch.Tensor, size: int) -> None:
            """Keep the batch rows ``rows`` in new storage of ``size`` positions."""
            n = self._length
            keys = self._keys.new_empty(len(rows), self._keys.shape[1], size, self._keys.shape[3])
            values = self._values.new_empty(keys.shape)
            keys[:, :, :n] = self._keys[rows, :, :n]
            values[:, :, :n] = self._values[rows, :, :n]
            self._keys, self._values = keys, values
            self.keys, self.values = keys[:, :, :n], values[:, :, :n]

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self._copy(indices.to(self.device), self._keys.shape[2])

        def get_seq_length(self) -> int:
            return self._length if self.is_initialized else 0

    return PreallocatedLayer


def _decoder_cache(model: Any, cross, capacity: int | None = None):
    """The decoder's cache: the cross-attention keys and values given (``cross``), the self-attention cache empty
    (preallocated for ``capacity`` positions when given)."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    own = DynamicCache()
    if capacity is not None:
        own.layer_class_to_replicate = functools.partial(_preallocated_layer_class(), capacity)
    cache = EncoderDecoderCache(own, cross)
    for i in range(len(whisper_core(model).decoder.layers)):
        cache.is_updated[i] = True
    return cache


def _as_rows(rows: Any, refusal: str) -> torch.Tensor:
    """``rows`` as ``(n,)`` int64 row indices on the CPU; floats and booleans (which would be truncated or read as
    0/1 rows, silently) raise ``ValueError(refusal + "; got dtype ...")``."""
    t = torch.as_tensor(rows)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{refusal}; got dtype {t.dtype}")
    return t.to(dtype=torch.long).cpu().flatten()


def _check_states(model: Any, states: torch.Tensor, kv_rows: torch.Tensor | None, n_rows_name: str) -> torch.Tensor:
    core = whisper_core(model)
    d_model = core.config.d_model
    if not isinstance(states, torch.Tensor) or states.ndim != 3 or states.shape[-1] != d_model:
        shape = tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__
        raise ValueError(f"states must be the encoder output (n_states, frames, {d_model}); got {shape}.")
    if not bool(torch.isfinite(states).all()):  # NaN would decode to tokens all the same, silently
        raise ValueError(f"states hold {int((~torch.isfinite(states)).sum())} non-finite values (NaN or inf); the "
                         "encoder output of real audio is finite: check the features or the patch that made them.")
    if kv_rows is None:
        return torch.arange(len(states))
    kv_rows = _as_rows(kv_rows, f"kv_rows must be integer row indices into states, one per {n_rows_name}")
    if len(kv_rows) == 0 or int(kv_rows.min()) < 0 or int(kv_rows.max()) >= len(states):
        raise ValueError(f"kv_rows must index the {len(states)} rows of states (0..{len(states) - 1}), one per "
                         f"{n_rows_name}; got values {kv_rows.unique().tolist()[:8]}")
    return kv_rows


# ---------------------------------------------------------------------------------------------------------------
# Teacher forcing
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def teacher_force(model: Any, states: torch.Tensor, decoder_input_ids: torch.Tensor, *,
                  kv_rows: Sequence[int] | torch.Tensor | None = None,
                  patches: Mapping[str, Any] | None = None, logits: bool = True) -> torch.Tensor:
    """One decoder forward over given tokens.

    Args:
        states: distinct encoder outputs ``(n_states, frames, d_model)``.
        decoder_input_ids: ``(rows, tokens)``, prompt included.
        kv_rows: ``(rows,)``: the states row each decoder row reads (default: row ``r`` reads ``states[r]``). K
            stacked copies of B clips: ``kv_rows = arange(K * B) % B``; the keys and values are projected once.
        patches: interventions during the forward (hook-point name -> intervention, as
            :func:`asrinterp_utils.hooks.patch`).
        logits: return the logits ``(rows, tokens, vocab)`` (default) or the final hidden state ``dec.final``
            ``(rows, tokens, d_model)``.
    """
    core = whisper_core(model)
    param = next(core.parameters())
    states = states.to(device=param.device, dtype=param.dtype)
    ids = torch.as_tensor(decoder_input_ids).to(param.device)
    kv = _check_states(model, states, kv_rows, "row of decoder_input_ids")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"decoder_input_ids must be integer token ids (torch.long); got dtype {ids.dtype}")
    if ids.ndim != 2 or len(ids) != len(kv):
        raise ValueError(f"decoder_input_ids must be (rows, tokens) with one row per kv_rows entry ({len(kv)}); got "
                         f"{tuple(ids.shape)}")
    n_ctx, vocab = int(core.config.max_target_positions), int(core.config.vocab_size)
    if ids.shape[1] > n_ctx:
        raise ValueError(f"decoder_input_ids has {ids.shape[1]} tokens; the decoder holds {n_ctx} positions")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"decoder_input_ids must be token ids in 0..{vocab - 1}; got values from {int(ids.min())} to "
                         f"{int(ids.max())}")
    beyond = _positions_beyond(model, _normalise(patches), ids.shape[1])
    if beyond:
        raise ValueError(f"teacher_force: {'; '.join(beyond)}: these patches would change nothing. Restrict them to "
                         "positions the run reaches (prompt included, counted from 0), or give more tokens.")
    with attention_mode(model, "dec", kv, len(states)), patch(model, patches or {}):
        cache = _decoder_cache(model, cross_attention_kv(model, states, frame_minor=False))
        hidden = core.decoder(input_ids=ids, encoder_hidden_states=states, cache=cache,
                              use_cache=True).last_hidden_state
    if not logits:
        return hidden
    proj_out = getattr(hf_model(model), "proj_out", None)
    if proj_out is None:
        raise TypeError("teacher_force needs a model with an unembedding (WhisperForConditionalGeneration)")
    return proj_out(hidden)


# ---------------------------------------------------------------------------------------------------------------
# Greedy decoding
# ---------------------------------------------------------------------------------------------------------------

GREEDY_BATCH = 48
"""Clips decoded together by the package's transcript paths (:func:`asrinterp_utils.store.transcripts`, loop
mining, :func:`asrinterp_utils.patching.transcribe_and_score`). Rows that end leave the batch, so a larger batch
only amortises each step's fixed cost over more rows: on the book's 2-core CPU, 48 clips of a mixed set (a quarter
of them running to the 64-token limit) decode 1.7x faster in one batch than in batches of 8, on tiny.en and on base.
The encoder still runs in its own smaller batches."""

SWEEP_ROWS = 1024
"""Decoder rows per forward in the package's stacked sweeps (:func:`asrinterp_utils.patching.generate_sweep`'s
``batch_rows``, :func:`asrinterp_utils.repair.rule_sweep`'s ``max_rows``): the targets of a sweep that fit run in
one batch, which reads every clip's cross-attention keys and values once per step for all of them. Each row holds
its own self-attention cache (``layers x 2 x d_model`` floats per position: 1.6 MB for base at 64 new tokens, so
about 1.7 GB at this many rows). On the book's CPU, chapter 8's head and component sweeps run 1.18-1.37x faster
in chunks of 1024 rows than of 256, with the same tokens (``benchmarks/sweep_rows.py``). On a GPU with a large
model, lower it to what the device holds (``book/how_to_run.md``)."""

PRUNE_COPY_COST = 16
"""Dead cross-attention key/value rows are dropped once ``dead rows x steps that may remain`` exceeds this times
the live rows. Copying a live row (read and write, with fresh pages) costs a few reads of it, but the steps that
may remain (up to the token limit) overstate the steps most rows still take: measured on base, 16 decodes the
encoder lens's 24 rows and chapter 8's 48 mining candidates 6-8 % faster than 4, and 8 to 32 are within noise
of each other (dropping nothing is 20-30 % slower)."""


@dataclass
class Decoded:
    """Greedy transcripts of a decoding batch.

    Attributes:
        ids: ``LongTensor (rows, n_prompt + n_steps)`` on the CPU: the prompt, the generated tokens, then
            ``<|endoftext|>`` (rows that ended earlier are padded with it; a row cut at ``max_new_tokens`` has none).
        text_ids: per row, the generated text tokens up to the first ``<|endoftext|>``.
        hit_limit: per row, True when it ran to ``max_new_tokens`` without ending.
        n_prompt: the prompt's length.
        token_logprobs: with ``greedy(..., scores=True)``: per row, the log-probability of each token it wrote,
            its text tokens then the ``<|endoftext|>`` that ended it (none where it ran to the limit), under the
            suppression rules it was chosen under (the distribution greedy took the maximum of); a row that
            followed another has the leader's. None otherwise.
        first_hidden: with ``scores=True``: the decoder's final hidden state (``dec.final``) at position 0,
            ``<|startoftranscript|>``, ``(rows, d_model)``, where Whisper reads its no-speech probability. None
            otherwise.
    """

    ids: torch.Tensor
    text_ids: list[list[int]]
    hit_limit: list[bool]
    n_prompt: int
    token_logprobs: list[list[float]] | None = None
    first_hidden: torch.Tensor | None = None

    def texts(self, tokenizer: Any) -> list[str]:
        """The transcripts (:func:`text_of` each row)."""
        return [text_of(tokenizer, row) for row in self.text_ids]


def text_of(tokenizer: Any, ids: Sequence[int]) -> str:
    """The transcript of text token ids: special tokens removed, stripped; with no tokenizer (a toy model), the ids
    written out, separated by spaces."""
    if tokenizer is None:
        return " ".join(map(str, ids))
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def _prompt_and_rules(model: Any, suppress_timestamps: bool):
    """The prompt ids, the end-of-text id and the suppression masks ``(vocab,)`` at the first and later steps, for
    a :class:`~asrinterp_utils.models.LoadedModel` or a bare Hugging Face Whisper (its decoder start token)."""
    if hasattr(model, "prompt_ids") and hasattr(model, "suppression_masks"):
        at_start, always = model.suppression_masks(suppress_timestamps)
        return model.prompt_ids(), model.end_of_text, at_start, always
    hf = hf_model(model)
    vocab = hf.config.vocab_size
    device = next(hf.parameters()).device
    none = torch.zeros(vocab, dtype=torch.bool, device=device)
    return [int(hf.config.decoder_start_token_id)], int(hf.config.eos_token_id), none, none


def _normalise(patches: Mapping[str, Any] | None) -> dict[str, list[Intervention]]:
    from .hooks import replace

    plan: dict[str, list[Intervention]] = {}
    for name, ivs in (patches or {}).items():
        ivs = list(ivs) if isinstance(ivs, (list, tuple)) else [ivs]
        plan[name] = [iv if isinstance(iv, Intervention) else replace(iv) for iv in ivs]
    return plan


def _positions_beyond(model: Any, plan: dict[str, list[Intervention]], n_decoder: int) -> list[str]:
    """``"point: positions [...]"`` for every intervention of ``plan`` restricted to positions that a run over
    ``n_decoder`` decoder positions (and the encoder's frames) never reaches: such a patch would change nothing,
    silently. Slices count from their start; float or negative positions are refused here already."""
    n_frames = int(whisper_core(model).config.max_source_positions)
    found = []
    for name, ivs in plan.items():
        sides = sorted({p.side for p in resolve_hook_points(model, name)})
        for iv in ivs:
            if iv.positions is None:
                continue
            if isinstance(iv.positions, slice):
                start = iv.positions.start
                wanted = [] if start is None or start < 0 else [int(start)]
            else:
                wanted = _absolute_positions(iv.positions).tolist()
            for side in sides:
                n = n_decoder if side == "dec" else n_frames
                beyond = sorted({int(x) for x in wanted if x >= n})
                if beyond:
                    found.append(f"{name}: positions {beyond} (the run has {n} "
                                 f"{'decoder positions' if side == 'dec' else 'encoder frames'})")
    return found


def _remappable(plan: dict[str, list[Intervention]]) -> bool:
    """Whether every intervention survives rows leaving the batch: it names its rows (they are renumbered) and its
    value has no batch axis of its own, or it applies to every row alike."""
    def batchless(value: Any) -> bool:
        if value is None or isinstance(value, (int, float)):
            return True
        return isinstance(value, torch.Tensor) and (value.dim() <= 2 or value.shape[0] == 1)

    for ivs in plan.values():
        for iv in ivs:
            if iv.mode == "from_rows" or iv.mode in ("zero", "scale"):
                continue
            if iv.mode == "mean" and iv.value is None:
                return False  # the mean over this batch changes when rows leave it
            if iv.mode == "fn" or not batchless(iv.value):
                return False
    return True


def _remap(plan: dict[str, list[Intervention]], position: torch.Tensor, n_rows: int) -> dict[str, list[Intervention]]:
    """The plan after rows left the batch: ``position[r]`` is original row ``r``'s new index (-1: gone)."""
    out: dict[str, list[Intervention]] = {}
    for name, ivs in plan.items():
        kept = []
        for iv in ivs:
            if iv.rows is None and iv.mode != "from_rows":
                kept.append(iv)
                continue
            rows = _index_list(iv.rows, n_rows, "rows") if iv.rows is not None else torch.arange(n_rows)
            new_rows = position[rows]
            if iv.mode == "from_rows":
                src = _index_list(iv.value, n_rows, "source rows")
                new_src = position[src]
                if bool(((new_rows >= 0) & (new_src < 0)).any()):
                    raise RuntimeError(f"{name}: a from_rows source row left the batch before its patched row; "
                                       "make the source rows follow the patched rows")
                alive = new_rows >= 0
                if bool(alive.any()):
                    kept.append(Intervention("from_rows", new_src[alive].tolist(), iv.heads, iv.positions,
                                             new_rows[alive].tolist()))
            else:
                alive = new_rows >= 0
                if bool(alive.any()):
                    kept.append(Intervention(iv.mode, iv.value, iv.heads, iv.positions, new_rows[alive].tolist()))
        if kept:
            out[name] = kept
    return out


@torch.no_grad()
def greedy(model: Any, states: torch.Tensor, *, max_new_tokens: int = 128,
           kv_rows: Sequence[int] | torch.Tensor | None = None, follow: Sequence[int] | torch.Tensor | None = None,
           patches: Mapping[str, Any] | None = None, suppress_timestamps: bool = True,
           compact: bool = True, scores: bool = False) -> Decoded:
    """Greedy decoding with one KV-cached loop, the same tokens whatever the batch size (up to float rounding at
    a near-tie: see the module's docstring).

    Args:
        states: distinct encoder outputs ``(n_states, frames, d_model)`` (from :func:`encode`, or an intermediate
            encoder layer's states for the encoder lens).
        max_new_tokens: most tokens per row after the prompt (``len(prompt) + max_new_tokens <= 448``).
        kv_rows: ``(rows,)``: the states row each decoder row reads (default one row per state).
        follow: ``(rows,)``: the row whose chosen token each row is fed (default itself). A row that follows
            another one gets no logits of its own and ends with it: a reference run stepping beside a patched run.
            A leader must follow itself.
        patches: interventions during decoding (hook-point name -> intervention, as
            :func:`asrinterp_utils.hooks.patch`). Interventions tied to rows (``rows=...``, ``from_rows``) name rows of
            this batch; when rows end they are renumbered.
        suppress_timestamps: forbid the timestamp tokens (default True).
        compact: let ended rows leave the batch (default). Kept off automatically when a hook of this package is
            attached outside this call (a cache stitches steps by row) or a patch cannot be renumbered.
        scores: also return each written token's log-probability and the final hidden state at position 0
            (:attr:`Decoded.token_logprobs`, :attr:`Decoded.first_hidden`), from the same steps, at the cost of one
            log-sum-exp over the vocabulary per row and step.

    Returns:
        :class:`Decoded`.
    """
    core = whisper_core(model)
    param = next(core.parameters())
    device, dtype = param.device, param.dtype
    n_ctx = int(core.config.max_target_positions)
    prompt, end_of_text, at_start, always = _prompt_and_rules(model, suppress_timestamps)
    if isinstance(max_new_tokens, bool) or not float(max_new_tokens).is_integer():
        raise ValueError(f"max_new_tokens must be a whole number of tokens; got {max_new_tokens!r}")
    max_new_tokens = int(max_new_tokens)
    if not 1 <= max_new_tokens <= n_ctx - len(prompt):
        raise ValueError(f"max_new_tokens must be between 1 and {n_ctx - len(prompt)} (the decoder holds {n_ctx} "
                         f"positions, the prompt uses {len(prompt)}); got {max_new_tokens}.")
    states = states.to(device=device, dtype=dtype)
    kv = _check_states(model, states, kv_rows, "decoder row")
    n_rows = len(kv)
    if follow is None:
        leader = torch.arange(n_rows)
    else:
        leader = _as_rows(follow, "follow must give integer row indices, one per decoder row")
        if len(leader) != n_rows or int(leader.min()) < 0 or int(leader.max()) >= n_rows:
            raise ValueError(f"follow must give one row index in 0..{n_rows - 1} per decoder row ({n_rows}); got "
                             f"{len(leader)} values")
        if not bool((leader[leader] == leader).all()):
            raise ValueError("follow: a row that others follow must follow itself (no chains)")
    plan = _normalise(patches)
    # step 0 runs the prompt, step s > 0 the token chosen at step s - 1: the last token is never fed back
    beyond = _positions_beyond(model, plan, len(prompt) + max_new_tokens - 1)
    if beyond:
        raise ValueError(f"greedy: {'; '.join(beyond)} with max_new_tokens={max_new_tokens}: these patches can never "
                         "apply. Restrict them to earlier positions (prompt included, counted from 0), or raise "
                         "max_new_tokens.")
    compact = compact and active_hook_count(model) == 0 and _remappable(plan)
    proj_out = hf_model(model).proj_out
    suppress_first, suppress_always = torch.nonzero(at_start).squeeze(1), torch.nonzero(always).squeeze(1)
    is_leader = leader == torch.arange(n_rows)
    packed = _pack_unembedding(proj_out, int(is_leader.sum()), max_new_tokens)  # only leaders get logits
    # Followers that no intervention targets are identical while they read the same states and have been fed the
    # same tokens: they share one batch row (forked when their leaders' tokens part).
    mergeable = ~is_leader & ~_targeted_rows(plan, n_rows) if compact else torch.zeros(n_rows, dtype=torch.bool)

    out = torch.full((n_rows, max_new_tokens), end_of_text, dtype=torch.long)
    ended = torch.zeros(n_rows, dtype=torch.bool)
    # The batch: physical rows. phys_of[v]: the physical row of (the caller's) row v, -1 once it has ended.
    mergeable_list = mergeable.tolist()
    keys = [(-1, int(kv[v])) if mergeable_list[v] else v for v in range(n_rows)]
    phys_of, first = _group(keys)
    phys_kv = kv[first]
    step_input = torch.tensor([prompt] * len(first), device=device)
    cache = _decoder_cache(model, cross_attention_kv(model, states), capacity=len(prompt) + max_new_tokens)
    n_kv = len(states)
    n_steps = 0
    stack = contextlib.ExitStack()
    logprob = torch.full((n_rows, max_new_tokens), float("nan")) if scores else None
    first_hidden = None

    def attach():
        stack.close()
        stack.enter_context(attention_mode(model, "dec", phys_kv, n_kv))
        stack.enter_context(patch(model, plan if torch.equal(phys_of, torch.arange(n_rows)) else
                                  _remap(plan, phys_of, n_rows)))

    attach()
    try:
        for step in range(max_new_tokens):
            hidden = core.decoder(input_ids=step_input, encoder_hidden_states=states, cache=cache,
                                  use_cache=True).last_hidden_state
            if scores and step == 0:  # every row is live at step 0
                first_hidden = hidden[phys_of.to(device), 0].detach().cpu()
            lead_rows = torch.nonzero(is_leader & ~ended).squeeze(1)  # only leaders still writing get logits
            logits = _unembed(proj_out, hidden[phys_of[lead_rows].to(device), -1], packed).float()
            logits.index_fill_(1, suppress_first if step == 0 else suppress_always, float("-inf"))
            chosen = torch.full((n_rows,), end_of_text, dtype=torch.long)
            # max(-1).indices: the same first maximal index as argmax (both documented so), 2.5x faster over the
            # vocabulary on this CPU (0.5 against 1.3 ms for 37 rows of tiny.en)
            chosen[lead_rows] = logits.max(-1).indices.cpu()
            if scores:
                picked = logits.gather(1, chosen[lead_rows, None].to(device))[:, 0]
                logprob[lead_rows, step] = (picked - torch.logsumexp(logits, -1)).cpu()
                live = torch.nonzero(~ended).squeeze(1)
                logprob[live, step] = logprob[leader[live], step]
            next_ids = torch.where(ended, end_of_text, chosen[leader])
            out[:, step] = next_ids
            n_steps = step + 1
            ended = ended | (next_ids == end_of_text)
            if bool(ended.all()):
                break
            if compact:  # ended rows leave; merged followers whose tokens part get a row each
                keys = [None if end else (phys, token) if merge else v for v, (end, phys, token, merge) in
                        enumerate(zip(ended.tolist(), phys_of.tolist(), next_ids.tolist(), mergeable_list))]
                new_phys_of, first = _group(keys)
                source = phys_of[first]  # the old row each new row continues
                if not torch.equal(source, torch.arange(len(step_input))):
                    cache.self_attention_cache.batch_select_indices(source.to(device))
                    phys_kv = phys_kv[source]
                    used = torch.unique(phys_kv)
                    # Drop the keys and values that no running row reads once reading them for the steps that
                    # may remain costs more than copying the live ones.
                    if (n_kv - len(used)) * (max_new_tokens - step - 1) > PRUNE_COPY_COST * len(used):
                        cache.cross_attention_cache.batch_select_indices(used.to(device))
                        states = states[used.to(device)]
                        phys_kv = torch.searchsorted(used, phys_kv)
                        n_kv = len(used)
                    phys_of = new_phys_of
                    attach()
                step_input = next_ids[first][:, None].to(device)
            else:
                step_input = next_ids[:, None].to(device)
    finally:
        stack.close()
    unreached = _positions_beyond(model, plan, len(prompt) + n_steps - 1)
    if unreached:
        warnings.warn(f"greedy: {'; '.join(unreached)}: every row ended after {n_steps} tokens, before these "
                      "positions, so those patches never applied.", stacklevel=2)
    ids = torch.cat([torch.tensor([prompt] * n_rows), out[:, :n_steps]], dim=1)
    text_ids = [row[:row.index(end_of_text)] if end_of_text in row else row for row in out[:, :n_steps].tolist()]
    hit_limit = [len(row) == n_steps == max_new_tokens for row in text_ids]
    token_logprobs = None
    if scores:
        token_logprobs = [logprob[r, :len(row) + (not hit)].tolist()
                          for r, (row, hit) in enumerate(zip(text_ids, hit_limit))]
    return Decoded(ids=ids, text_ids=text_ids, hit_limit=hit_limit, n_prompt=len(prompt),
                   token_logprobs=token_logprobs, first_hidden=first_hidden)


def _unembed(proj_out: torch.nn.Linear, hidden: torch.Tensor, packed: torch.Tensor | None = None) -> torch.Tensor:
    """``proj_out(hidden)`` for the few rows of one decoding step, ``hidden (rows, d_model)`` -> ``(rows, vocab)``,
    computed as ``(weight @ hidden.T).T``: with a handful of rows, ``linear`` repacks the whole
    ``(vocab, d_model)`` weight at every call and runs at about half the speed (13 ms against 6 ms on base's
    unembedding for 8 rows on this book's 2-core CPU). The values agree to float rounding.

    With ``packed`` (:func:`_pack_unembedding`, the weight packed once for the whole decoding loop) and 2 rows or
    more, MKL multiplies by the packed weight instead (4.4 ms against 6.4 ms for 8 rows of base, 2.7 against 6.5 for
    4), where it gives the plain product bit for bit: checked the first time each shape comes (:data:`_PACKED_EXACT`),
    and never used for a shape where it does not."""
    weight, rows = proj_out.weight, hidden.shape[0]
    shape = (rows, *weight.shape)
    if packed is None or rows < 2 or _PACKED_EXACT.get(shape) is False:
        logits = (weight @ hidden.T).T
    else:
        hidden = hidden.contiguous()
        logits = torch.ops.mkl._mkl_linear(hidden, packed, weight, None, rows)
        if shape not in _PACKED_EXACT:
            plain = (weight @ hidden.T).T
            _PACKED_EXACT[shape] = bool(torch.equal(logits, plain))
            logits = plain
    return logits if proj_out.bias is None else logits + proj_out.bias


_PACKED_EXACT: dict[tuple[int, int, int], bool] = {}
"""``(rows, vocab, d_model)`` -> whether MKL's product with a packed weight equals the plain product bit for bit
on this machine (a property of the kernels MKL picks for the shape, not of the values)."""


def _pack_unembedding(proj_out: torch.nn.Linear, n_rows: int, max_steps: int) -> torch.Tensor | None:
    """``proj_out``'s weight packed for MKL's matrix product (:func:`_unembed`), or ``None`` where that does not apply:
    fewer than 2 rows, fewer than :data:`_PACK_MIN_STEPS` steps at most, not float32 on the CPU, gradients wanted, or
    a PyTorch built without MKL. Packed anew for each decoding loop (about 25 ms for base), so an edit to the weights
    between calls, ``.data`` included, is always seen."""
    weight = proj_out.weight
    if (n_rows < 2 or max_steps < _PACK_MIN_STEPS or weight.device.type != "cpu" or weight.dtype != torch.float32
            or not weight.is_contiguous() or (torch.is_grad_enabled() and weight.requires_grad)):
        return None
    try:
        reorder = torch.ops.mkl._mkl_reorder_linear_weight
    except (AttributeError, RuntimeError):
        return None
    return reorder(weight.detach(), _PACK_ROWS)


_PACK_MIN_STEPS = 16
"""Packing costs about as much as the 6 to 25 steps it takes to pay back (1 to 4 ms saved a step, by row count):
a loop allowed fewer steps takes the plain product."""

_PACK_ROWS = 64
"""The row count MKL is told to pack the unembedding for; it serves any count (measured on base: 2 to 48 rows, each at
least as fast as the plain product and equal to it bit for bit)."""


def _group(keys: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with equal keys share a physical row (``None``: the row has ended). Returns ``phys_of (rows,)`` (-1 for
    ended rows) and ``first (n_physical,)``, the first row of each physical row."""
    phys_of = torch.full((len(keys),), -1, dtype=torch.long)
    index: dict = {}
    first = []
    for v, key in enumerate(keys):
        if key is None:
            continue
        if key not in index:
            index[key] = len(first)
            first.append(v)
        phys_of[v] = index[key]
    return phys_of, torch.tensor(first, dtype=torch.long)


def _targeted_rows(plan: dict[str, list[Intervention]], n_rows: int) -> torch.Tensor:
    """``(rows,)`` bool: rows that an intervention tied to rows writes (its ``rows``)."""
    targeted = torch.zeros(n_rows, dtype=torch.bool)
    for ivs in plan.values():
        for iv in ivs:
            if iv.rows is None:
                if iv.mode == "from_rows":
                    targeted[:] = True
                continue
            targeted[_index_list(iv.rows, n_rows, "rows")] = True
    return targeted


# ---------------------------------------------------------------------------------------------------------------
# Transcripts of audio
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def generate_ids(lm: Any, clips: Sequence[np.ndarray], max_new_tokens: int = 128, *, batch_size: int = 16
                 ) -> torch.LongTensor:
    """Greedy decoding (English, no timestamps) of clips (1-D float32 arrays at 16 kHz, at most 30 s), prompt
    included: ``LongTensor (batch, len(prompt) + n_new)`` on the CPU, laid out as ``Decoded.ids`` (the text of row
    ``i`` is ``row[len(prompt):]`` up to its first ``<|endoftext|>``). The same tokens as Hugging Face ``generate``
    (a test asserts it)."""
    return greedy(lm, encode(lm, clips, batch_size=batch_size).states, max_new_tokens=max_new_tokens).ids


def transcribe(lm: Any, clips: Sequence[np.ndarray], max_new_tokens: int = 128, *, batch_size: int = 16
               ) -> list[str]:
    """Greedy English transcripts (no timestamps), one stripped string per clip (1-D float32 arrays at 16 kHz)."""
    states = encode(lm, clips, batch_size=batch_size).states
    return greedy(lm, states, max_new_tokens=max_new_tokens).texts(lm.tokenizer)
