"""Patch sweeps: evaluate many patch targets as batched forwards.

A sweep asks one question many times: "if I change *this* component, how does the metric move?" The naive way runs
one full forward per target. Whisper's encoder (1,500 frames) is most of a forward's cost, and the decoder's
cross-attention keys and values are a projection of the encoder output: when every target patches only decoder
points, neither changes from target to target. :func:`run_sweep` therefore

1. runs the encoder once per clip and projects the cross-attention keys and values once per layer;
2. stacks ``K`` targets into one decoder batch of ``K * batch`` rows, each target's patch restricted to its own rows;
3. lets the ``K`` copies share one set of cross-attention keys and values (an attention function that folds the
   copies into the query axis, so nothing is copied K times).

Targets that patch encoder points still run batched (``K`` targets per forward), with the encoder recomputed.
``method="naive"`` is the one-forward-per-target reference; tests assert that both give the same numbers.

>>> targets = head_targets(lm, "cross_head_out", source=noise_cache)       # every (layer, head)
>>> result = run_sweep(lm, feats, ids, targets, metric=token_logprob(start=len(lm.prompt_ids())))
>>> result.to_frame()
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_utils import AttentionInterface
from transformers.models.whisper.modeling_whisper import eager_attention_forward

from .hooks import Intervention, hf_model, patch, replace, resolve_hook_points, whisper_core, zero

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``metric(logits (N, tokens, vocab), decoder_input_ids (N, tokens)) -> (N,)``."""


@dataclass
class PatchTarget:
    """One thing to try: a label and the interventions (hook-point name -> Intervention) applied together."""

    label: str
    interventions: Mapping[str, Intervention]


@dataclass
class SweepResult:
    """``values[i, b]``: the metric for clip ``b`` with target ``i`` patched; ``baseline[b]``: unpatched."""

    labels: list[str]
    values: torch.Tensor  # (n_targets, batch)
    baseline: torch.Tensor  # (batch,)

    def to_frame(self):
        """Tidy table: one row per (target, clip), with the change from the baseline."""
        import pandas as pd

        rows = []
        for i, label in enumerate(self.labels):
            for b in range(self.values.shape[1]):
                v, base = float(self.values[i, b]), float(self.baseline[b])
                rows.append({"target": label, "clip": b, "metric": v, "baseline": base, "delta": v - base})
        return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------

def token_logprob(start: int) -> Metric:
    """Mean log-probability the model gives the teacher-forced tokens ``ids[:, start:]`` (each predicted from the
    previous position). ``start`` is usually the prompt length."""
    def metric(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits[:, start - 1:-1].float(), dim=-1)
        target = ids[:, start:].to(logits.device)
        return logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).mean(dim=1)
    return metric


def logit_diff(position: int, good: int, bad: int) -> Metric:
    """``logit[good] - logit[bad]`` at one decoder position."""
    def metric(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return (logits[:, position, good] - logits[:, position, bad]).float()
    return metric


# ---------------------------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------------------------

def head_targets(model: Any, point: str = "cross_head_out", source: Any = None,
                 layers: Sequence[int] | None = None, positions: Any = None) -> list[PatchTarget]:
    """One target per (layer, head) of a per-head decoder point (``cross_head_out`` or ``self_head_out``) or encoder
    point (``head_out``): replace that head by ``source`` (a cache of another run, or a tensor), or zero it when
    ``source`` is None. Labels are like ``"dec.3.cross_head_out[h5]"``."""
    side = "enc" if point == "head_out" else "dec"
    core = whisper_core(model)
    stack = core.encoder.layers if side == "enc" else core.decoder.layers
    n_heads = (stack[0].self_attn if side == "enc" or point == "self_head_out" else stack[0].encoder_attn).num_heads
    targets = []
    for layer in (range(len(stack)) if layers is None else layers):
        name = f"{side}.{layer}.{point}"
        for h in range(n_heads):
            iv = zero(heads=[h], positions=positions) if source is None else replace(source, heads=[h],
                                                                                      positions=positions)
            targets.append(PatchTarget(f"{name}[h{h}]", {name: iv}))
    return targets


def component_targets(model: Any, names: Sequence[str] | str, source: Any = None,
                      positions: Any = None) -> list[PatchTarget]:
    """One target per hook point matching ``names`` (e.g. ``"dec.*.cross_attn_out"``): replace it by ``source``
    (or zero it when ``source`` is None)."""
    return [PatchTarget(p.name, {p.name: zero(positions=positions) if source is None
                                 else replace(source, positions=positions)})
            for p in resolve_hook_points(model, names)]


# ---------------------------------------------------------------------------------------------------------------
# Shared cross-attention keys and values
# ---------------------------------------------------------------------------------------------------------------

SHARED_KV_ATTENTION = "asrinterp_shared_kv"


def _shared_kv_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention where ``K`` stacked copies of a batch share one set of keys and values.

    ``query`` is ``(K * batch, heads, tokens, d_head)`` and ``key``/``value`` are ``(batch, heads, frames, d_head)``:
    the copies are folded into the query axis, ``(batch, heads, K * tokens, d_head)``, so the keys and values are
    used as they are. Rows of attention are independent, so this is the same arithmetic as K separate batches.
    """
    if key.shape[0] == query.shape[0]:
        return eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    if attention_mask is not None or query.shape[0] % key.shape[0]:
        raise RuntimeError("shared keys/values need an unmasked attention and a query batch that is a multiple "
                           "of the key batch")
    batch, heads, frames, d_head = key.shape
    copies, tokens = query.shape[0] // batch, query.shape[2]
    q = query.view(copies, batch, heads, tokens, d_head).permute(1, 2, 0, 3, 4).reshape(batch, heads, -1, d_head)
    out, weights = eager_attention_forward(module, q, key, value, None, scaling=scaling, dropout=dropout)
    # out: (batch, copies * tokens, heads, d_head) -> (copies * batch, tokens, heads, d_head)
    out = out.view(batch, copies, tokens, heads, d_head).transpose(0, 1).reshape(copies * batch, tokens, heads, d_head)
    weights = weights.view(batch, heads, copies, tokens, frames).permute(2, 0, 1, 3, 4).reshape(
        copies * batch, heads, tokens, frames)
    return out, weights


AttentionInterface.register(SHARED_KV_ATTENTION, _shared_kv_attention)
AttentionMaskInterface.register(SHARED_KV_ATTENTION, eager_mask)  # the same additive masks as eager attention


class _SharedKVAttention:
    """Within the block, the model's attention is :func:`_shared_kv_attention` (eager arithmetic; the model's own
    setting is restored on exit)."""

    def __init__(self, core: torch.nn.Module) -> None:
        self.config = core.config

    def __enter__(self) -> None:
        self.saved = self.config._attn_implementation
        self.config._attn_implementation = SHARED_KV_ATTENTION

    def __exit__(self, *exc) -> None:
        self.config._attn_implementation = self.saved


def cross_attention_kv(model: Any, encoder_out: torch.Tensor) -> DynamicCache:
    """Project the encoder output ``(batch, frames, d_model)`` to every decoder layer's cross-attention keys and
    values, ``(batch, heads, frames, d_head)`` each, held in a cache the decoder reads instead of recomputing."""
    core = whisper_core(model)
    cross = DynamicCache()
    for i, layer in enumerate(core.decoder.layers):
        attn = layer.encoder_attn
        shape = (encoder_out.shape[0], -1, attn.num_heads, attn.head_dim)
        k = attn.k_proj(encoder_out).view(shape).transpose(1, 2).contiguous()
        v = attn.v_proj(encoder_out).view(shape).transpose(1, 2).contiguous()
        cross.update(k, v, i)
    return cross


def decoder_logits(model: Any, decoder_input_ids: torch.Tensor, encoder_out: torch.Tensor,
                   cross_kv: DynamicCache | None = None) -> torch.Tensor:
    """Decoder forward from a precomputed encoder output; with ``cross_kv`` the cross-attention keys and values are
    read from it (its batch may divide the decoder batch: copies share it). Returns logits ``(N, tokens, vocab)``."""
    core = whisper_core(model)
    proj_out = getattr(hf_model(model), "proj_out", None)
    if cross_kv is None:
        hidden = core.decoder(input_ids=decoder_input_ids, encoder_hidden_states=encoder_out,
                              use_cache=False).last_hidden_state
    else:
        cache = EncoderDecoderCache(DynamicCache(), cross_kv)
        for i in range(len(core.decoder.layers)):
            cache.is_updated[i] = True
        with _SharedKVAttention(core):
            hidden = core.decoder(input_ids=decoder_input_ids, encoder_hidden_states=encoder_out, cache=cache,
                                  use_cache=True).last_hidden_state
    if proj_out is None:
        raise TypeError("decoder_logits needs a model with an unembedding (WhisperForConditionalGeneration)")
    return proj_out(hidden)


# ---------------------------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------------------------

def _batched_interventions(chunk: Sequence[PatchTarget], batch: int) -> dict[str, list[Intervention]]:
    """The interventions of K targets, each restricted to its own rows of a K * batch stack."""
    grouped: dict[str, list[Intervention]] = {}
    for k, target in enumerate(chunk):
        rows = list(range(k * batch, (k + 1) * batch))
        for name, iv in target.interventions.items():
            if iv.rows is not None:
                raise ValueError(f"{target.label}: rows are set by the sweep; leave Intervention.rows as None")
            grouped.setdefault(name, []).append(Intervention(iv.mode, iv.value, iv.heads, iv.positions, rows))
    return grouped


@torch.no_grad()
def run_sweep(model: Any, input_features: torch.Tensor, decoder_input_ids: torch.Tensor,
              targets: Sequence[PatchTarget], metric: Metric, *, batch_size: int = 16,
              method: str = "batched", progress: bool = False) -> SweepResult:
    """Evaluate ``metric`` with each target patched, teacher-forced on ``decoder_input_ids``.

    Args:
        input_features: ``(batch, n_mels, 3000)`` log-mel features.
        decoder_input_ids: ``(batch, tokens)`` (prompt + transcript).
        targets: what to patch (see :func:`head_targets`, :func:`component_targets`).
        metric: ``metric(logits, ids) -> (batch,)``.
        batch_size: targets stacked per forward (the forward's batch is ``batch_size * batch``).
        method: ``"batched"`` (default) or ``"naive"`` (one full forward per target: the reference).
    """
    hf = hf_model(model)
    device = next(hf.parameters()).device
    feats = input_features.to(device=device, dtype=next(hf.parameters()).dtype)
    ids = decoder_input_ids.to(device)
    batch = feats.shape[0]
    values = torch.empty(len(targets), batch)
    if method == "naive":
        baseline = metric(hf(feats, decoder_input_ids=ids).logits, ids).cpu()
        for i, target in enumerate(_progress(targets, progress, "naive sweep")):
            with patch(model, dict(target.interventions)):
                values[i] = metric(hf(feats, decoder_input_ids=ids).logits, ids).cpu()
        return SweepResult([t.label for t in targets], values, baseline)
    if method != "batched":
        raise ValueError(f"method must be 'batched' or 'naive', got {method!r}")

    decoder_only = all(p.side == "dec" for t in targets for name in t.interventions
                       for p in resolve_hook_points(model, name))
    if decoder_only:
        encoder_out = whisper_core(model).encoder(feats).last_hidden_state  # once for every target
        cross_kv = cross_attention_kv(model, encoder_out)  # once for every target
        baseline = metric(decoder_logits(model, ids, encoder_out, cross_kv), ids).cpu()
    else:
        baseline = metric(hf(feats, decoder_input_ids=ids).logits, ids).cpu()
    chunks = [targets[i:i + batch_size] for i in range(0, len(targets), batch_size)]
    for c, chunk in enumerate(_progress(chunks, progress, "batched sweep")):
        k = len(chunk)
        stacked_ids = ids.repeat(k, 1)  # row k * batch + b: target k, clip b
        with patch(model, _batched_interventions(chunk, batch)):
            if decoder_only:
                logits = decoder_logits(model, stacked_ids, encoder_out, cross_kv)
            else:
                logits = hf(feats.repeat(k, 1, 1), decoder_input_ids=stacked_ids).logits
        start = c * batch_size
        values[start:start + k] = metric(logits, stacked_ids).view(k, batch).cpu()
    return SweepResult([t.label for t in targets], values, baseline)


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc)
