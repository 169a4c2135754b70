"""Sparse autoencoders on Whisper's activations: collect a hook point's activations, train a TopK sparse
autoencoder on them, measure it (alone and spliced into real runs), and save it in SAELens's format.

>>> acts = collect_activations(lm, clips, "enc.3.resid_post")   # encoder frames of real audio only
>>> fit = train_topk(acts.values, d_sae=1536, k=32, seed=0)     # TopKSAE, its loss curve, its metrics
>>> fit.metrics                                                   # SAEMetrics(fve=..., l0=..., dead_fraction=...)
>>> spliced_cost(lm, fit.sae, "enc.3.resid_post", clips)        # WER and next-token loss with it spliced in
>>> save(fit.sae, "sae/tiny.en-enc.3", hook_name="enc.3.resid_post", model_name="tiny.en")

The model is a **TopK SAE** (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): ``z = ReLU(TopK((x -
b_dec) W_enc + b_enc))``, ``x_hat = z W_dec + b_dec``, with exactly the encoding SAELens's ``topk`` architecture
computes, so a saved SAE loads there (``SAE.load_from_disk(folder)``: ``cfg.json`` and
``sae_weights.safetensors`` with ``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)``, ``b_enc (d_sae)``, ``b_dec
(d_in)``). Training follows the paper: decoder rows kept at unit norm, the encoder initialised as the decoder's
transpose, the loss the reconstruction error over the batch's variance plus the AuxK loss, in which latents that
have not fired for a while reconstruct what the live ones missed (keeps latents from dying).

Why a trainer of our own, small: SAELens 6's ``SAETrainer`` does train on any iterator of activation tensors, but
``import sae_lens`` imports TransformerLens, wandb and datasets (its SAE class subclasses TransformerLens's
``HookedRootModule``), some hundreds of megabytes for a loop of a few dozen lines; EleutherAI's sparsify
(``eai-sparsify``) trains only from token batches of a Hugging Face language model that its trainer runs itself,
which Whisper's audio inputs are not. The files written here are the ones SAELens reads; nothing here imports it
(``tests/test_sae.py`` loads one with SAELens where it is installed: sae-lens 6.54.12 read the same four tensors
and gave bit-identical ``encode`` and ``decode`` outputs).

Activations come from the execution layer (:mod:`asrinterp_utils.run`): encoder points over the frames that hold
real audio (never the padding that fills the 30 s window), decoder points over the prompt and the model's own
greedy transcript, teacher-forced (never the end-of-text padding of a batch).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import run, stats, store
from .audio import SECONDS_PER_FRAME
from .cache import cache_activations
from .hooks import HookPoint, Intervention, apply, parse_hook_point, whisper_core

__all__ = ["Activations", "SAEFit", "SAEMetrics", "SplicedCost", "TopKSAE", "best_latent_per_value", "clip_means",
           "collect_activations", "evaluate", "label_association", "latents", "load", "save", "spliced_cost", "steer",
           "top_activations", "train_topk"]

SAELENS_VERSION = "6.0.0"
"""The SAELens config version written into ``cfg.json`` (SAELens reads a file without one as a pre-6.0 config)."""


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------

class TopKSAE(nn.Module):
    """A TopK sparse autoencoder over ``d_in``-dimensional activations with ``d_sae`` latents, ``k`` active.

    ``encode(x)``: ``(..., d_in) -> (..., d_sae)``, ``ReLU`` of the ``k`` largest of ``(x - b_dec) @ W_enc + b_enc``
    (the others 0; fewer than ``k`` are non-zero where some of the largest are negative). ``decode(z)``: ``z @ W_dec +
    b_dec``. ``forward(x)``: the reconstruction ``(..., d_in)``.
    """

    def __init__(self, d_in: int, d_sae: int, k: int) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("d_sae", d_sae), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TopKSAE: {name} must be a positive whole number; got {value!r}")
        if k > d_sae:
            raise ValueError(f"TopKSAE: k ({k}) active latents cannot exceed d_sae ({d_sae}) latents")
        self.d_in, self.d_sae, self.k = d_in, d_sae, k
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def _check(self, x: torch.Tensor, width: int, what: str) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != width:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"TopKSAE.{what} takes (..., {width}) tensors; got {got}")

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) @ W_enc + b_enc``, ``(..., d_in) -> (..., d_sae)``: what the TopK selects from."""
        self._check(x, self.d_in, "encode")
        return (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return _topk_relu(self.pre_activations(x), self.k)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z, self.d_sae, "decode")
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def _topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    values, index = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, index, values.relu())


# ---------------------------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Activations:
    """A hook point's activations over clips, one row per kept position.

    ``values``: ``(n, d)`` float32; ``clip``: ``(n,)`` the clip each row comes from (its index in the clips given);
    ``position``: ``(n,)`` the encoder frame (20 ms each) or decoder token position of the row; ``point``: the hook
    point's name.
    """

    values: torch.Tensor
    clip: np.ndarray
    position: np.ndarray
    point: str

    def __len__(self) -> int:
        return len(self.values)

    def of_clips(self, clips: Sequence[int]) -> "Activations":
        """The rows of the clips ``clips`` (indices into the clips given), in their order here; clip indices kept."""
        keep = np.isin(self.clip, np.asarray(clips))
        return Activations(self.values[torch.as_tensor(keep)], self.clip[keep], self.position[keep], self.point)


def _plain_point(lm: Any, point: str, caller: str) -> HookPoint:
    if not isinstance(point, str):
        raise ValueError(f"{caller}: give one hook point name, e.g. 'enc.3.resid_post'; got {point!r}")
    p = parse_hook_point(lm, point)
    if p.is_pattern or p.is_heads:
        raise ValueError(f"{caller}: {point} is laid out {p.shape_doc}; an SAE reads points laid out (batch, "
                         "positions, width), e.g. enc.{L}.resid_post, dec.{L}.mlp_out or dec.{L}.mlp_hidden")
    return p


@torch.no_grad()
def collect_activations(lm: Any, clips: Sequence[np.ndarray], point: str, *, batch_size: int = 16,
                        max_new_tokens: int = 96, progress: bool = False) -> Activations:
    """The activations of ``point`` over ``clips`` (1-D float32 arrays at 16 kHz), for training or reading an SAE.

    Encoder points keep the frames that hold real audio (``n_frames`` of each clip; the padding of the 30 s window
    is never kept), from an encoder pass that stops after the point's layer. Decoder points keep the prompt and the
    model's own greedy transcript (from the :mod:`~asrinterp_utils.store`, up to ``max_new_tokens``),
    teacher-forced. Returns :class:`Activations`.
    """
    p = _plain_point(lm, point, "collect_activations")
    clips = list(clips)
    if not clips:
        raise ValueError("collect_activations: no clips given")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"collect_activations: batch_size must be a whole number of clips >= 1; got {batch_size!r}")
    values, clip_ids, positions = [], [], []
    starts = range(0, len(clips), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=f"activations of {point}")
    for start in starts:
        batch = clips[start:start + batch_size]
        if p.side == "enc":
            features, n_frames = lm.features(batch)
            with cache_activations(lm, point) as cache:  # enc.final (no layer) needs the whole encoder
                run.encode_features(lm, features, stop_at_layer=None if p.layer is None else p.layer + 1)
            keep = [int(n) for n in n_frames]
        else:
            states = store.encoded(lm, batch).states
            decoded = store.decoded(lm, batch, max_new_tokens=max_new_tokens, states=states)
            with cache_activations(lm, point) as cache:
                run.teacher_force(lm, states, decoded.ids)
            keep = [decoded.n_prompt + len(t) for t in decoded.text_ids]
        acts = cache[point]  # (batch, positions, width)
        for row, n in enumerate(keep):
            values.append(acts[row, :n].float().cpu())
            clip_ids.append(np.full(n, start + row))
            positions.append(np.arange(n))
    return Activations(torch.cat(values), np.concatenate(clip_ids), np.concatenate(positions), point)


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class SAEMetrics:
    """How well an SAE reconstructs activations: ``fve`` (fraction of variance explained, 1 - residual over total
    sum of squares around the mean), ``mse`` (per row, summed over dimensions), ``l0`` (mean active latents per
    row), ``dead_fraction`` (latents active on no row), ``n`` rows."""

    fve: float
    mse: float
    l0: float
    dead_fraction: float
    n: int


@dataclass
class SAEFit:
    """A trained :class:`TopKSAE`, its training loss per step (``losses``: reconstruction error over variance, AuxK
    not included), its :class:`SAEMetrics` on the training activations and the settings it was trained with."""

    sae: TopKSAE
    losses: list[float]
    metrics: SAEMetrics
    settings: dict = field(default_factory=dict)


def _as_matrix(x: Any, caller: str) -> torch.Tensor:
    if isinstance(x, Activations):
        x = x.values
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{caller}: activations must be (n, d_in) with at least 2 rows; got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{caller}: the activations hold {int((~torch.isfinite(x)).sum())} non-finite values")
    return x.float()


@torch.no_grad()
def evaluate(sae: TopKSAE, activations: Any, *, batch_size: int = 8192) -> SAEMetrics:
    """:class:`SAEMetrics` of ``sae`` on ``activations`` (``(n, d_in)`` or :class:`Activations`)."""
    x = _as_matrix(activations, "evaluate")
    sae._check(x, sae.d_in, "evaluate")
    mean = x.mean(0)
    residual = total = active = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for start in range(0, len(x), batch_size):
        rows = x[start:start + batch_size]
        z = sae.encode(rows)
        residual += float(((sae.decode(z) - rows) ** 2).sum())
        total += float(((rows - mean) ** 2).sum())
        active += float((z > 0).sum())
        fired |= (z > 0).any(0)
    return SAEMetrics(fve=1.0 - residual / total if total > 0 else float("nan"), mse=residual / len(x),
                      l0=active / len(x), dead_fraction=float((~fired).float().mean()), n=len(x))


def train_topk(activations: Any, *, d_sae: int, k: int, epochs: int = 10, batch_size: int = 1024,
               lr: float | None = None, aux_coefficient: float = 1 / 32, dead_after: int | None = None,
               seed: int = 0) -> SAEFit:
    """Train a :class:`TopKSAE` on ``activations`` (``(n, d_in)`` or :class:`Activations`), as Gao et al. (2024)
    describe it.

    The activations are scaled by one number so that their mean norm is ``sqrt(d_in)`` while training (the learning
    rate then does not depend on the point's scale), and the scale is folded into the weights afterwards: the SAE
    returned reads and writes raw activations. ``b_dec`` starts at the mean, the decoder rows at random unit
    vectors (kept at unit norm after every step) and the encoder at the decoder's transpose.

    Args:
        d_sae: latents (e.g. 4x the width); k: active latents per row.
        epochs: passes over the activations, shuffled by ``seed``; batch_size: rows per Adam step.
        lr: Adam's step size (default ``2e-4 / sqrt(d_sae / 2**14)``, the paper's scaling).
        aux_coefficient: weight of the AuxK loss; dead_after: rows seen without firing after which a latent counts
            as dead for it (default: one epoch's rows, at most 10 million).
    """
    x = _as_matrix(activations, "train_topk")
    n, d_in = x.shape
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"train_topk: {name} must be a whole number >= {low}; got {value!r}")
    sae = TopKSAE(d_in, d_sae, k)
    lr = 2e-4 / math.sqrt(d_sae / 2 ** 14) if lr is None else float(lr)
    dead_after = min(n, 10_000_000) if dead_after is None else int(dead_after)
    aux_k = min(d_in // 2, d_sae)
    generator = torch.Generator().manual_seed(seed)
    scale = math.sqrt(d_in) / float(x.norm(dim=1).mean().clamp_min(1e-12))
    with torch.no_grad():
        decoder = torch.randn(d_sae, d_in, generator=generator)
        sae.W_dec.copy_(decoder / decoder.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(x.mean(0) * scale)
    optimiser = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            rows = x[order[start:start + batch_size]] * scale
            pre = sae.pre_activations(rows)
            z = _topk_relu(pre, k)
            recon = sae.decode(z)
            variance = ((rows - rows.mean(0)) ** 2).sum().clamp_min(1e-12)
            loss = ((recon - rows) ** 2).sum() / variance
            since_fired += len(rows)
            since_fired[(z > 0).any(0)] = 0
            dead = since_fired >= dead_after
            total = loss
            if bool(dead.any()) and aux_coefficient > 0:  # dead latents reconstruct what the live ones missed
                error = (rows - recon).detach()
                aux_z = _topk_relu(pre.masked_fill(~dead, float("-inf")), min(aux_k, int(dead.sum())))
                aux_z = torch.nan_to_num(aux_z, neginf=0.0)
                aux = ((aux_z @ sae.W_dec - error) ** 2).sum() / ((error - error.mean(0)) ** 2).sum().clamp_min(1e-12)
                total = loss + aux_coefficient * aux
            optimiser.zero_grad()
            total.backward()
            optimiser.step()
            with torch.no_grad():
                sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
            losses.append(float(loss.detach()))
    with torch.no_grad():  # fold the scale in: the same latents for raw activations
        sae.W_enc.mul_(scale)
        sae.W_dec.div_(scale)
        sae.b_dec.div_(scale)
    sae.requires_grad_(False)
    settings = {"d_sae": d_sae, "k": k, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "aux_coefficient": aux_coefficient, "dead_after": dead_after, "seed": seed, "n_rows": n}
    return SAEFit(sae, losses, evaluate(sae, x), settings)


# ---------------------------------------------------------------------------------------------------------------
# Spliced into real runs
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class SplicedCost:
    """What splicing an SAE's reconstruction into the model costs, on the same clips.

    ``loss_clean``/``loss_spliced``/``loss_zero``: mean next-token loss (nats per token) of the model's own greedy
    transcripts, teacher-forced, unpatched / with the point replaced by its reconstruction / by zeros;
    ``loss_recovered``: ``(zero - spliced) / (zero - clean)`` (1: the reconstruction loses nothing, 0: no better than
    zeros). ``texts_clean``/``texts_spliced``: greedy transcripts; ``wer_clean``/``wer_spliced``: their WER against
    ``references`` where given (NaN otherwise), and ``changed``: the share of clips whose transcript changed."""

    loss_clean: float
    loss_spliced: float
    loss_zero: float
    loss_recovered: float
    texts_clean: list[str]
    texts_spliced: list[str]
    wer_clean: float
    wer_spliced: float
    changed: float


def _on_real_frames(transform, n_frames: torch.Tensor | None):
    """An intervention function replacing a point by ``transform(act)``: on the real frames only for an encoder
    point (``n_frames (batch,)``; the padding keeps its value), at every position for a decoder point."""
    def fn(act: torch.Tensor, ctx: Any) -> torch.Tensor:
        new = transform(act)
        if n_frames is None:
            return new
        real = ctx.positions.to(act.device)[None, :] < n_frames.to(act.device)[:, None]  # (batch, positions)
        return torch.where(real[..., None], new, act)
    return fn


def _token_loss(logits: torch.Tensor, ids: torch.Tensor, lengths: list[int], n_prompt: int) -> torch.Tensor:
    """Mean negative log-probability of each row's own tokens after the prompt (``lengths``: its text and, where
    it ended, its end-of-text; not the padding), ``(batch,)``. Logits at position t predict the token at t + 1."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return torch.stack([-logprobs[row, n_prompt - 1:n_prompt - 1 + n].mean() for row, n in enumerate(lengths)])


@torch.no_grad()
def spliced_cost(lm: Any, sae: TopKSAE, point: str, clips: Sequence[np.ndarray], *,
                 references: Sequence[str] | None = None, max_new_tokens: int = 96) -> SplicedCost:
    """Splice ``sae``'s reconstruction into real runs at ``point`` (on the real frames of an encoder point) and
    measure what it costs (:class:`SplicedCost`): the next-token loss of the model's own greedy transcripts,
    teacher-forced, against the clean run and against zeros in the same place, and the greedy transcripts with
    the reconstruction spliced in (WER against ``references`` where given)."""
    from .metrics import word_error_rate

    p = _plain_point(lm, point, "spliced_cost")
    clips = list(clips)
    if not clips:
        raise ValueError("spliced_cost: no clips given")
    if references is not None and len(references) != len(clips):
        raise ValueError(f"spliced_cost: {len(references)} references for {len(clips)} clips")
    width = _point_width(lm, p)
    if sae.d_in != width:
        raise ValueError(f"spliced_cost: the SAE reads {sae.d_in}-dimensional activations but {point} is "
                         f"{width}-dimensional in this model; train it on this point")
    encoded = store.encoded(lm, clips)
    decoded = store.decoded(lm, clips, max_new_tokens=max_new_tokens, states=encoded.states)
    lengths = [len(t) + (not hit) for t, hit in zip(decoded.text_ids, decoded.hit_limit)]
    n_frames = encoded.n_frames if p.side == "enc" else None

    def losses_and_states(transform):
        """Teacher-forced losses ``(batch,)`` with the point replaced by ``transform(act)``, and what greedy
        decoding then needs: the encoder output and the decoder patches."""
        plan = {point: apply(_on_real_frames(transform, n_frames))}
        states = encoded.states
        if p.side == "enc":  # one call: the function reads the frame counts of the whole batch
            states, plan = run.encode_features(lm, encoded.features, patches=plan, batch_size=len(clips)), {}
        logits = run.teacher_force(lm, states, decoded.ids, patches=plan)
        return _token_loss(logits, decoded.ids, lengths, decoded.n_prompt), states, plan

    clean = _token_loss(run.teacher_force(lm, encoded.states, decoded.ids), decoded.ids, lengths, decoded.n_prompt)
    spliced, states, plan = losses_and_states(lambda act: sae(act.float()).to(act.dtype))
    zeroed, _, _ = losses_and_states(torch.zeros_like)
    texts_clean = decoded.texts(lm.tokenizer)
    texts_spliced = run.greedy(lm, states, max_new_tokens=max_new_tokens, patches=plan).texts(lm.tokenizer)
    clean_loss, spliced_loss, zero_loss = float(clean.mean()), float(spliced.mean()), float(zeroed.mean())
    wer = (lambda texts: word_error_rate(list(references), texts)) if references is not None else (
        lambda texts: float("nan"))
    return SplicedCost(
        loss_clean=clean_loss, loss_spliced=spliced_loss, loss_zero=zero_loss,
        loss_recovered=((zero_loss - spliced_loss) / (zero_loss - clean_loss) if zero_loss != clean_loss
                        else float("nan")),
        texts_clean=texts_clean, texts_spliced=texts_spliced, wer_clean=wer(texts_clean),
        wer_spliced=wer(texts_spliced),
        changed=float(np.mean([a != b for a, b in zip(texts_clean, texts_spliced)])))


def _point_width(lm: Any, p: HookPoint) -> int:
    config = whisper_core(lm).config
    if p.point == "mlp_hidden":
        return int(config.encoder_ffn_dim if p.side == "enc" else config.decoder_ffn_dim)
    return int(config.d_model)


# ---------------------------------------------------------------------------------------------------------------
# Reading features
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def latents(sae: TopKSAE, activations: Any, *, batch_size: int = 8192) -> torch.Tensor:
    """``sae.encode`` of every row, ``(n, d_sae)`` float32, in batches."""
    x = _as_matrix(activations, "latents")
    return torch.cat([sae.encode(x[s:s + batch_size].float()) for s in range(0, len(x), batch_size)])


@torch.no_grad()
def clip_means(sae: TopKSAE, activations: Activations, n_clips: int | None = None) -> np.ndarray:
    """Each latent's mean activation over each clip's rows (its real frames, or its tokens): ``(n_clips, d_sae)``,
    row ``c`` for ``activations.clip == c`` (``n_clips``: how many clips were given, when the last have no rows)."""
    if not isinstance(activations, Activations):
        raise ValueError("clip_means: give the Activations of collect_activations (rows must know their clip)")
    z = latents(sae, activations)
    clips = torch.as_tensor(activations.clip, dtype=torch.long)
    n_clips = int(clips.max()) + 1 if n_clips is None else int(n_clips)
    if n_clips <= int(clips.max()):
        raise ValueError(f"clip_means: the rows come from clips 0..{int(clips.max())}, but n_clips is {n_clips}; give "
                         "the number of clips the activations were collected from (or leave it out)")
    sums = torch.zeros(n_clips, sae.d_sae).index_add_(0, clips, z)
    counts = torch.bincount(clips, minlength=n_clips).clamp_min(1)
    return (sums / counts[:, None]).numpy()


def _auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of each column of ``scores (n, k)`` for the boolean ``positive (n,)``: the chance
    that a positive row outscores a negative one (ties count half), ``(k,)``."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(scores, axis=0)
    return (ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def label_association(features: np.ndarray, labels: Any, groups: Any, select: Any, *, top: int = 10,
                      n_resamples: int = 1000, seed: int = 0):
    """Which latents tell a binary label apart: chosen on one split, measured on the other.

    ``features``: ``(n_clips, d_sae)`` per-clip activations (:func:`clip_means`); ``labels``: ``(n_clips,)``
    booleans (e.g. non-speech); ``groups``: ``(n_clips,)`` speakers or sources (resampled whole for the interval);
    ``select``: ``(n_clips,)`` booleans, the **selection** split where every latent is ranked by how far its AUROC is
    from 0.5. The ``top`` latents are then measured on the other clips (the **evaluation** split): AUROC with a
    grouped bootstrap interval (``n_resamples`` draws of the evaluation split's groups with replacement; a draw
    left with one class has no AUROC and is skipped), the mean activation in each class and the share of clips
    where the latent fires.
    Returns a DataFrame, one row per chosen latent, best first; ``direction`` says whether it was chosen for
    being higher in the label (AUROC above 0.5 on the selection split) or lower.
    """
    import pandas as pd

    features = np.asarray(features, dtype=np.float64)
    labels, groups, select = (np.asarray(x) for x in (labels, groups, select))
    if features.ndim != 2 or not len(features) == len(labels) == len(groups) == len(select):
        raise ValueError(f"label_association: features (n_clips, d_sae) and one label, group and select flag per "
                         f"clip; got {features.shape}, {len(labels)}, {len(groups)}, {len(select)}")
    labels, select = labels.astype(bool), select.astype(bool)
    for name, rows in (("selection", select), ("evaluation", ~select)):
        if labels[rows].all() or not labels[rows].any():
            raise ValueError(f"label_association: the {name} split needs clips of both classes")
    chosen_auc = _auroc(features[select], labels[select])
    order = np.argsort(-np.abs(chosen_auc - 0.5), kind="stable")[:top]
    held = ~select
    x, y = features[held][:, order], labels[held]
    auc = _auroc(x, y)
    draws = [_auroc(x[rows], y[rows]) for rows in stats.grouped_resamples(groups[held], n_resamples, seed)
             if y[rows].any() and not y[rows].all()]
    low, high = (np.percentile(np.array(draws), [2.5, 97.5], axis=0) if draws
                 else (np.full(len(order), np.nan), np.full(len(order), np.nan)))
    return pd.DataFrame({
        "latent": order, "direction": np.where(chosen_auc[order] >= 0.5, "higher in label", "lower in label"),
        "auroc_selection": chosen_auc[order], "auroc": auc, "ci_low": low, "ci_high": high,
        "mean_in_label": x[y].mean(0), "mean_outside": x[~y].mean(0), "fires_in_label": (x[y] > 0).mean(0),
        "fires_outside": (x[~y] > 0).mean(0), "n_label": int(y.sum()), "n_outside": int((~y).sum()),
        "groups": len(np.unique(groups[held]))})


def best_latent_per_value(features: np.ndarray, values: Any, groups: Any, select: Any, *, n_resamples: int = 1000,
                          seed: int = 0):
    """For a label with several values (an accent, a kind of sound, a word's category), one against the rest at a
    time: the latent that best tells that value apart on the selection split, measured on the other split
    (:func:`label_association` with ``top=1`` for each value). ``features (n_clips, d_sae)``; ``values``,
    ``groups``, ``select``: ``(n_clips,)``. Returns a DataFrame, one row per value in sorted order: ``value,
    latent, direction, auroc_selection, auroc, ci_low, ci_high, n_label, n_outside, groups`` and ``carries``:
    whether the held-out interval lies wholly on the side of 0.5 the latent was chosen on."""
    import pandas as pd

    values = np.asarray(values)
    if len(values) != len(np.asarray(features)):
        raise ValueError(f"best_latent_per_value: one value per clip; got {len(values)} values for "
                         f"{len(np.asarray(features))} clips")
    distinct = sorted(set(values.tolist()))
    if len(distinct) < 2:
        raise ValueError(f"best_latent_per_value: the label needs at least two values; got {distinct}")
    rows = []
    for value in distinct:
        best = label_association(features, values == value, groups, select, top=1, n_resamples=n_resamples,
                                 seed=seed).iloc[0]
        rows.append({"value": value, **{key: best[key] for key in (
            "latent", "direction", "auroc_selection", "auroc", "ci_low", "ci_high", "n_label", "n_outside",
            "groups")}})
    table = pd.DataFrame(rows)
    chosen_higher = table.auroc_selection > 0.5
    return table.assign(carries=(chosen_higher & (table.ci_low > 0.5)) | (~chosen_higher & (table.ci_high < 0.5)))


@torch.no_grad()
def top_activations(sae: TopKSAE, activations: Activations, latent: int | Sequence[int], *, n: int = 5):
    """Where a latent fires most: the ``n`` rows with its largest activation, at most one per clip. Returns a
    DataFrame ``clip, position, seconds`` (an encoder frame's start in its clip; NaN for decoder tokens),
    ``activation``. ``latent`` may be a list: the rows are then encoded once for all of them, and the table gains a
    first column ``latent``, each latent's rows together in the order given."""
    import pandas as pd

    if not isinstance(activations, Activations):
        raise ValueError("top_activations: give the Activations of collect_activations (rows must know their clip)")
    several = not isinstance(latent, (int, np.integer))
    wanted = [int(x) for x in (latent if several else [latent])]
    bad = [x for x in wanted if not 0 <= x < sae.d_sae]
    if bad or not wanted:
        raise ValueError(f"top_activations: latent must be in 0..{sae.d_sae - 1}; got {bad or latent}")
    if int(n) < 1:
        raise ValueError(f"top_activations: n (rows per latent) must be at least 1; got {n}")
    z = latents(sae, activations)[:, wanted].numpy()                                          # (rows, latents)
    tables = []
    for column, index in enumerate(wanted):
        table = pd.DataFrame({"clip": activations.clip, "position": activations.position,
                              "activation": z[:, column]})
        table = table[table.activation > 0].sort_values("activation", ascending=False, kind="stable")
        tables.append(table.drop_duplicates("clip").head(int(n)).assign(latent=index))
    table = pd.concat(tables, ignore_index=True)
    seconds = table.position * SECONDS_PER_FRAME if activations.point.startswith("enc.") else float("nan")
    columns = ["latent"] * several + ["clip", "position", "seconds", "activation"]
    return table.assign(seconds=seconds)[columns]


# ---------------------------------------------------------------------------------------------------------------
# Steering along a latent
# ---------------------------------------------------------------------------------------------------------------

def steer(sae: TopKSAE, latent: int, *, add: float | None = None, clamp: float | None = None,
          positions: Any = None, rows: Any = None) -> Intervention:
    """An intervention (for :func:`~asrinterp_utils.hooks.patch`, or the ``patches`` of the execution layer's
    calls) that moves the point along ``latent``'s decoder direction ``W_dec[latent]`` ``(d_in,)``.

    ``add=a``: raise the latent's activation by ``a`` everywhere (``x + a * W_dec[latent]``; ``a = 0`` changes
    nothing). ``clamp=c``: set the latent's activation to ``c`` (``x + (c - z(x)) * W_dec[latent]``, ``z(x)`` the
    latent's value in ``sae.encode(x)``, 0 where it is not among the top ``k``; ``c = 0`` removes the feature where
    it fires and keeps whatever the SAE does not reconstruct). Exactly one of the two. ``positions``/``rows``
    restrict it as for any intervention.
    """
    if (add is None) == (clamp is None):
        raise ValueError("steer: give exactly one of add= (raise the latent by that much) or clamp= (set it to that "
                         "value)")
    if isinstance(latent, bool) or not 0 <= int(latent) < sae.d_sae or int(latent) != latent:
        raise ValueError(f"steer: latent must be a whole number in 0..{sae.d_sae - 1}; got {latent!r}")
    direction = sae.W_dec[int(latent)].detach()

    def fn(act: torch.Tensor, ctx: Any) -> torch.Tensor:
        if act.shape[-1] != sae.d_in:
            raise ValueError(f"steer: the SAE reads {sae.d_in}-dimensional activations, {ctx.point.name} is "
                             f"{act.shape[-1]}-dimensional")
        step = direction.to(act.device, act.dtype)
        if add is not None:
            return act + float(add) * step
        current = sae.encode(act.float())[..., int(latent)].to(act.dtype)
        return act + (float(clamp) - current)[..., None] * step

    return apply(fn, positions=positions, rows=rows)


# ---------------------------------------------------------------------------------------------------------------
# SAELens's format
# ---------------------------------------------------------------------------------------------------------------

def save(sae: TopKSAE, folder: str | os.PathLike, *, hook_name: str, model_name: str, **metadata: Any) -> Path:
    """Write ``sae`` where SAELens's ``SAE.load_from_disk(folder)`` reads it: ``cfg.json`` (architecture
    ``"topk"``, ``d_in``, ``d_sae``, ``k``, ``dtype``, ``apply_b_dec_to_input``, ``normalize_activations``,
    ``metadata`` with ``hook_name``, ``model_name``, ``sae_lens_version`` and ``metadata``'s other entries) and
    ``sae_weights.safetensors``. The folder is written whole, then renamed into place (an interrupted save leaves
    the previous one). Returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    cfg = {"architecture": "topk", "d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.k,
           "dtype": str(sae.W_enc.dtype).removeprefix("torch."), "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "rescale_acts_by_decoder_norm": False,
           "metadata": {"sae_lens_version": SAELENS_VERSION, "hook_name": hook_name, "model_name": model_name,
                        **metadata}}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file({name: getattr(sae, name).detach().contiguous().cpu()
                   for name in ("W_enc", "W_dec", "b_enc", "b_dec")}, str(tmp / "sae_weights.safetensors"))
        (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2))
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load(folder: str | os.PathLike) -> tuple[TopKSAE, dict]:
    """Read an SAE written by :func:`save` (or by SAELens, for its ``topk`` architecture with raw activations):
    ``(TopKSAE, cfg)``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    if not cfg_path.exists() or not weights_path.exists():
        raise FileNotFoundError(f"load: {folder} needs cfg.json and sae_weights.safetensors (as sae.save writes them)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("architecture") != "topk":
        raise ValueError(f"load: {folder} holds a {cfg.get('architecture')!r} SAE; only 'topk' is read here")
    if cfg.get("normalize_activations", "none") != "none" or cfg.get("rescale_acts_by_decoder_norm", False):
        raise ValueError(f"load: {folder} normalises or rescales activations, which this TopKSAE does not do")
    sae = TopKSAE(int(cfg["d_in"]), int(cfg["d_sae"]), int(cfg["k"]))
    tensors = load_file(str(weights_path))
    expected = {"W_enc": (sae.d_in, sae.d_sae), "W_dec": (sae.d_sae, sae.d_in), "b_enc": (sae.d_sae,),
                "b_dec": (sae.d_in,)}
    for name, shape in expected.items():
        if name not in tensors or tuple(tensors[name].shape) != shape:
            got = tuple(tensors[name].shape) if name in tensors else "missing"
            raise ValueError(f"load: {weights_path} must hold {name} of shape {shape}; got {got}")
    with torch.no_grad():
        for name in expected:
            getattr(sae, name).copy_(tensors[name].float())
    sae.requires_grad_(False)
    return sae, cfg
