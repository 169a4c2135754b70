"""Lenses: read what the model would say if it stopped at an intermediate layer.

**Logit lens (decoder).** Each decoder layer's residual stream ``(batch, tokens, d_model)`` goes through the final
decoder LayerNorm and the tied unembedding, exactly as the last layer's does. The LayerNorm's statistics (mean and
variance) are computed from *that layer's own* residual vector; reusing the final layer's statistics is a known bug
of some implementations. Layer 0 of the lens is the embeddings (``dec.0.resid_pre``); layer ``l`` (1..n) is the
output of decoder block ``l - 1`` (``dec.{l-1}.resid_post``), and the last one is the model's own output.

**Saturation layer.** For each position, the first lens layer from which the lens's top-1 token equals the model's
final top-1 token at that layer and every later one (following the LLM literature; the paper's exact definition is
not known).

**Encoder lens.** Feed encoder layer ``l``'s output (through the final encoder LayerNorm by default, since that is
what the decoder was trained to read) to the decoder in place of the last layer's, and generate. All layers of one
clip are decoded together as one batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .cache import cache_activations
from .hooks import hf_model, whisper_core


@dataclass
class LogitLensResult:
    """Per lens layer ``l`` (0 = embeddings, n = final), batch row ``b`` and position ``t``:

    ``top_ids``/``top_probs``: ``(layers, batch, tokens, k)``; ``final_prob``: probability the lens gives the model's
    final top-1 token; ``final_rank``: its rank (0 = top); ``kl``: KL(final || lens) in nats; ``entropy``: of the
    lens distribution, in nats; ``agrees``: lens top-1 == final top-1 (all ``(layers, batch, tokens)``).
    ``final_ids``: ``(batch, tokens)``, the model's top-1 prediction at each position (the next token).
    """

    top_ids: torch.Tensor
    top_probs: torch.Tensor
    final_prob: torch.Tensor
    final_rank: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor
    agrees: torch.Tensor
    final_ids: torch.Tensor

    @property
    def n_layers(self) -> int:
        return self.kl.shape[0]

    def saturation_layer(self) -> torch.Tensor:
        """``(batch, tokens)``: first lens layer from which the lens agrees with the final top-1 at every later
        layer (the last lens layer always agrees)."""
        disagree = ~self.agrees  # (layers, batch, tokens)
        layers = torch.arange(self.n_layers).view(-1, 1, 1).expand_as(disagree)
        last_bad = torch.where(disagree, layers, torch.full_like(layers, -1)).amax(0)
        return last_bad + 1  # one past the last layer that disagrees (0 if none does)

    def per_layer(self, mask: torch.Tensor | None = None) -> pd.DataFrame:
        """Mean top-1 agreement, KL, final-token probability and entropy per lens layer over the positions in
        ``mask`` ``(batch, tokens)`` (default: all)."""
        m = torch.ones_like(self.agrees[0]) if mask is None else mask.bool()
        rows = []
        for layer in range(self.n_layers):
            rows.append({"layer": layer,
                         "top1_agreement": float(self.agrees[layer][m].float().mean()),
                         "kl_to_final": float(self.kl[layer][m].mean()),
                         "final_token_prob": float(self.final_prob[layer][m].mean()),
                         "final_token_rank_median": float(self.final_rank[layer][m].float().median()),
                         "entropy": float(self.entropy[layer][m].mean())})
        return pd.DataFrame(rows)


def lens_logits(model: Any, residual: torch.Tensor) -> torch.Tensor:
    """Residual vectors ``(..., d_model)`` through the final decoder LayerNorm (statistics of each vector itself) and
    the tied unembedding: ``(..., vocab)``."""
    core = whisper_core(model)
    return hf_model(model).proj_out(core.decoder.layer_norm(residual))


@torch.no_grad()
def logit_lens(model: Any, input_features: torch.Tensor, decoder_input_ids: torch.Tensor, *, top_k: int = 5
               ) -> LogitLensResult:
    """Logit lens over every decoder layer and position, teacher-forced on ``decoder_input_ids`` ``(batch, tokens)``.

    One forward pass caches the residual stream; the lens of each layer is then one LayerNorm and one matrix
    product, computed layer by layer so that memory stays at one ``(batch, tokens, vocab)`` tensor.
    """
    hf = hf_model(model)
    n = len(whisper_core(model).decoder.layers)
    names = ["dec.0.resid_pre"] + [f"dec.{i}.resid_post" for i in range(n)]
    device = next(hf.parameters()).device
    with cache_activations(model, names, device=None) as cache:
        final_logits = hf(input_features.to(device), decoder_input_ids=decoder_input_ids.to(device)).logits
    final_logp = torch.log_softmax(final_logits.float(), dim=-1)
    final_p = final_logp.exp()
    final_ids = final_logits.argmax(-1)
    out = {k: [] for k in ("top_ids", "top_probs", "final_prob", "final_rank", "kl", "entropy", "agrees")}
    for layer, name in enumerate(names):
        logits = final_logits if layer == n else lens_logits(model, cache[name])  # the last layer IS the output
        logp = torch.log_softmax(logits.float(), dim=-1)
        p = logp.exp()
        top = p.topk(top_k, dim=-1)
        chosen = logits.gather(-1, final_ids.unsqueeze(-1))
        out["top_ids"].append(top.indices.cpu())
        out["top_probs"].append(top.values.cpu())
        out["final_prob"].append(p.gather(-1, final_ids.unsqueeze(-1)).squeeze(-1).cpu())
        out["final_rank"].append((logits > chosen).sum(-1).cpu())
        out["kl"].append((final_p * (final_logp - logp)).sum(-1).clamp(min=0).cpu())
        out["entropy"].append(-(p * logp).sum(-1).cpu())
        out["agrees"].append((logits.argmax(-1) == final_ids).cpu())
    return LogitLensResult(**{k: torch.stack(v) for k, v in out.items()}, final_ids=final_ids.cpu())


@torch.no_grad()
def encoder_lens(lm: Any, audio_list: Sequence[np.ndarray], *, layers: Sequence[int] | None = None,
                 apply_final_norm: bool = True, max_new_tokens: int = 64) -> pd.DataFrame:
    """Transcribe every clip from every encoder layer's output.

    Args:
        lm: a :class:`~asrinterp_utils.models.LoadedModel`.
        audio_list: clips, 16 kHz mono float32.
        layers: encoder layers to read (default all; the last one reproduces the normal transcript).
        apply_final_norm: pass the layer's output through the final encoder LayerNorm first (default True).
        max_new_tokens: cap per transcript (intermediate layers can loop).

    Returns a DataFrame with ``clip, layer, transcript``; all layers of one clip are decoded as one batch.
    """
    core = whisper_core(lm)
    n = len(core.encoder.layers)
    layers = list(range(n)) if layers is None else list(layers)
    rows = []
    for clip, wave in enumerate(audio_list):
        feats, _ = lm.features([wave])
        with cache_activations(lm, [f"enc.{i}.resid_post" for i in layers], device=None) as cache:
            core.encoder(feats)
        states = torch.cat([cache[f"enc.{i}.resid_post"] for i in layers])  # (layers, 1500, d_model)
        if apply_final_norm:
            states = core.encoder.layer_norm(states)
        ids = lm.generate_ids(None, max_new_tokens=max_new_tokens, encoder_states=states)
        texts = lm.tokenizer.batch_decode(ids, skip_special_tokens=True)
        rows += [{"clip": clip, "layer": layer, "transcript": text.strip()} for layer, text in zip(layers, texts)]
    return pd.DataFrame(rows)
