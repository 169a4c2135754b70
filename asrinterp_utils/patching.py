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

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from . import run, stats, store
from .hooks import Intervention, hf_model, patch, replace, resolve_hook_points, whisper_core, zero
from .runtime import check_whole

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

    def grid(self, clips: Sequence[int] | None = None, columns: Sequence[str] | None = None):
        """The mean change from the baseline (over all clips, or the clips ``clips``) as a table, one row per
        layer and one column per component or head (:func:`layer_grid`)."""
        delta = self.values - self.baseline
        if clips is not None:
            delta = delta[:, list(clips)]
        return layer_grid(dict(zip(self.labels, delta.mean(dim=1).tolist())), columns)

    def changes(self):
        """The change from the baseline as a ``(clips, targets)`` DataFrame, columns named by the targets."""
        import pandas as pd

        return pd.DataFrame((self.values - self.baseline).T.double().numpy(), columns=self.labels)

    def best_held_out(self, groups: Any = None, *, largest: bool = True, seed: int = 0) -> "HeldOutBest":
        """The target with the largest (``largest=False``: the most negative) mean change, chosen on half the
        clips and measured on the other half, and the other way round
        (:func:`~asrinterp_utils.stats.cross_fitted_best`): every clip is scored by a choice it took no part in, so
        the estimate lacks the optimism of the best of many targets read off the clips that chose it. ``groups
        (clips,)`` keeps clips of one speaker or sentence on one side and is what the interval resamples
        (:func:`~asrinterp_utils.stats.bootstrap_mean`)."""
        changes = self.changes()
        fit = stats.cross_fitted_best(changes, groups=groups, seed=seed, higher_is_better=largest)
        in_sample = changes[fit.best_overall].mean()
        return HeldOutBest(fit.best_overall, float(in_sample), fit.agreement, list(dict.fromkeys(fit.chosen)),
                           stats.bootstrap_mean(fit.values, groups=groups, seed=seed))


@dataclass(frozen=True)
class HeldOutBest:
    """What :meth:`SweepResult.best_held_out` returns.

    Attributes:
        target: the target all the clips would choose (what a chapter names as "the best").
        in_sample: its mean change on all the clips, which chose it (optimistic).
        agreement: the share of folds whose own choice was ``target`` too.
        chosen: the targets the folds chose, in order.
        estimate: the cross-fitted mean change with its bootstrap interval
            (:class:`~asrinterp_utils.stats.Estimate`).
    """
    target: str
    in_sample: float
    agreement: float
    chosen: list
    estimate: Any

    def as_row(self) -> dict:
        """A table row: the choice, its in-sample and cross-fitted change, and how stable the choice is."""
        return {"best on all clips": self.target, "in sample": round(self.in_sample, 3),
                "cross-fitted (95 % interval)": str(self.estimate), "folds choosing it": f"{self.agreement:.0%}",
                "chosen per half": ", ".join(self.chosen)}


def layer_grid(values: Mapping[str, float], columns: Sequence[str] | None = None):
    """Values keyed by target label as a DataFrame, one row per layer (``"decoder layer"`` or ``"encoder
    layer"``) and one column per component (``"dec.3.mlp_out"`` -> row 3, column ``mlp_out``; in the order of
    ``columns``, default as first seen) or per head (``"dec.1.cross_head_out[h5]"`` -> row 1, column 5). Labels of
    other shapes (combinations, ``unpatched``) are left out; a (layer, column) that no label names is NaN."""
    import re

    import pandas as pd

    cells, sides, seen = {}, set(), []
    for label, value in values.items():
        m = re.fullmatch(r"(enc|dec)\.(\d+)\.(\w+?)(?:\[h(\d+)\])?", str(label))
        if m is None:
            continue
        side, layer, point, head = m.groups()
        column = int(head) if head is not None else point
        sides.add(side)
        cells[int(layer), column] = float(value)
        if column not in seen:
            seen.append(column)
    if len(sides) > 1:
        raise ValueError("layer_grid: the labels mix encoder and decoder targets; make one grid per side")
    order = list(columns) if columns is not None else sorted(seen) if all(isinstance(c, int) for c in seen) else seen
    layers = sorted({layer for layer, _ in cells})
    frame = pd.DataFrame([[cells.get((layer, c), float("nan")) for c in order] for layer in layers], index=layers,
                         columns=order)
    return frame.rename_axis("encoder layer" if sides == {"enc"} else "decoder layer")


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------

def _scored_positions(ids: torch.Tensor, start: int, end_of_text: int | None) -> torch.Tensor:
    """``(batch, tokens - start)`` booleans: which of ``ids[:, start:]`` a metric scores. With ``end_of_text``, each
    row's tokens up to and including its first ``end_of_text`` (predicting the end is part of the transcript); the
    copies that pad a shorter transcript to the batch's length are not scored, so a clip's value does not depend on
    which other clips share its batch. Without, every position."""
    target = ids[:, start:]
    if end_of_text is None:
        return torch.ones(target.shape, dtype=torch.bool, device=target.device)
    is_end = (target == end_of_text).long()
    return (torch.cumsum(is_end, dim=1) - is_end) == 0


def _check_start(start: int, n_tokens: int, name: str) -> None:
    if not 1 <= start < n_tokens:
        raise ValueError(f"{name}: start must be in 1..{n_tokens - 1} for {n_tokens} tokens (the first scored token; "
                         f"usually the prompt length); got {start}")


def token_logprob(start: int, *, end_of_text: int | None = None) -> Metric:
    """Mean log-probability the model gives the teacher-forced tokens ``ids[:, start:]`` (each predicted from the
    previous position). ``start`` is usually the prompt length.

    Give ``end_of_text`` (the tokenizer's ``<|endoftext|>`` id) whenever ``ids`` holds transcripts of different
    lengths, as a batch from :func:`asrinterp_utils.run.greedy` does: each row is then averaged over its own
    tokens and its end only, not over the end-of-text copies that pad it to the longest row."""
    def metric(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        _check_start(start, ids.shape[1], "token_logprob")
        predicting = logits[:, start - 1:-1].float()                      # (batch, tokens - start, vocab)
        target = ids[:, start:].to(logits.device)
        scored = _scored_positions(target, 0, end_of_text).float()  # target is ids[:, start:] already
        # log_softmax at the target only: one pass over the vocabulary, no (batch, tokens, vocab) output
        per_token = predicting.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(predicting, dim=-1)
        return (per_token * scored).sum(dim=1) / scored.sum(dim=1)
    return metric


def kl_from(base_logits: torch.Tensor, start: int, *, end_of_text: int | None = None) -> Metric:
    """KL divergence ``KL(base || patched)`` of the next-token distributions, averaged over the positions that
    predict ``ids[:, start:]``; ``base_logits (batch, tokens, vocab)`` is the unpatched run's (rows of a stacked
    sweep repeat the clips in order). 0 when a patch changes nothing; larger is a bigger change. ``end_of_text``:
    as for :func:`token_logprob` (average each row over its own tokens, not its padding)."""
    if base_logits.ndim != 3:
        raise ValueError(f"kl_from: base_logits must be (batch, tokens, vocab); got {tuple(base_logits.shape)}")
    _check_start(start, base_logits.shape[1], "kl_from")
    base = torch.log_softmax(base_logits[:, start - 1:-1].float(), dim=-1)

    def metric(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if logits.shape[1:] != base_logits.shape[1:] or logits.shape[0] % base_logits.shape[0]:
            raise ValueError(f"kl_from: logits {tuple(logits.shape)} do not repeat the clips of base_logits "
                             f"{tuple(base_logits.shape)}: the same tokens and vocabulary, and a whole number of "
                             "copies of its clips (rows of a stacked sweep repeat the clips in order)")
        patched = torch.log_softmax(logits[:, start - 1:-1].float(), dim=-1)
        ref = base.to(patched.device).repeat(patched.shape[0] // base.shape[0], 1, 1)
        scored = _scored_positions(ids.to(patched.device), start, end_of_text).float()
        per_token = (ref.exp() * (ref - patched)).sum(-1)
        return (per_token * scored).sum(dim=1) / scored.sum(dim=1)
    return metric


def logit_diff(position: int | Sequence[int], good: int | Sequence[int], bad: int | Sequence[int]) -> Metric:
    """``logit[good] - logit[bad]`` at a decoder position: the logits *at* ``position`` predict the token at
    ``position + 1``. Each argument is one value for every row, or a sequence with one value per clip (rows of a
    stacked sweep repeat the clips in order)."""
    def metric(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        n, n_positions, vocab = logits.shape

        def per_row(value, what: str, size: int):
            t = torch.as_tensor(value, dtype=torch.long, device=logits.device).flatten()
            if len(t) > 1 and n % len(t):
                raise ValueError(f"logit_diff: {len(t)} values of {what} for {n} rows; give one per clip (the rows "
                                 "repeat the clips) or one for all")
            if int(t.min()) < 0 or int(t.max()) >= size:
                raise ValueError(f"logit_diff: {what} must be in 0..{size - 1} for logits {tuple(logits.shape)}; got "
                                 f"values from {int(t.min())} to {int(t.max())}")
            return t.repeat(n // len(t)) if len(t) > 1 else t.expand(n)
        rows = torch.arange(n, device=logits.device)
        pos = per_row(position, "position", n_positions)
        good_ids, bad_ids = per_row(good, "good", vocab), per_row(bad, "bad", vocab)
        return (logits[rows, pos, good_ids] - logits[rows, pos, bad_ids]).float()
    return metric


@dataclass
class WordChoice:
    """Teacher-forced inputs that pit a word that was spoken against a competing word, at the position that
    predicts it (the semantic-bias measure).

    Attributes:
        ids: ``(clips, tokens)``: prompt + each sentence up to its spoken word + that word's first token, padded
            with ``<|endoftext|>``.
        positions: ``(clips,)``: the position whose logits predict the word.
        spoken, competing: ``(clips,)``: the first token of the spoken and of the competing word.
        distinct: ``(clips,)`` bool: the two first tokens differ (where they do not, the measure is 0 by
            construction and says nothing).
        metric: ``logit(spoken) - logit(competing)`` at ``positions`` (:func:`logit_diff`), per clip.
    """

    ids: torch.Tensor
    positions: list[int]
    spoken: list[int]
    competing: list[int]
    distinct: Any
    metric: Metric


def word_choice(lm: Any, texts: Sequence[str], spoken_words: Sequence[str],
                competing_words: Sequence[str]) -> WordChoice:
    """:class:`WordChoice` for sentences ``texts`` in which ``spoken_words[i]`` (a whole word of ``texts[i]``,
    any case) is the word said and ``competing_words[i]`` the one it is measured against."""
    import re

    import numpy as np

    if not len(texts) == len(spoken_words) == len(competing_words):
        raise ValueError(f"word_choice: texts, spoken_words and competing_words must have one entry per clip; got "
                         f"{len(texts)}, {len(spoken_words)} and {len(competing_words)}")
    prompt, encode = lm.prompt_ids(), lm.tokenizer.encode
    rows = []
    for i, (text, spoken, competing) in enumerate(zip(texts, spoken_words, competing_words)):
        found = re.search(rf"\b{re.escape(spoken.lower())}\b", text.lower())
        if found is None:
            raise ValueError(f"word_choice: clip {i}: the spoken word {spoken!r} is not a word of {text!r}")
        prefix = encode(" " + text[:found.start()].rstrip(), add_special_tokens=False)
        good = encode(" " + spoken, add_special_tokens=False)[0]
        bad = encode(" " + competing, add_special_tokens=False)[0]
        rows.append((prompt + prefix + [good], len(prompt) + len(prefix) - 1, good, bad))
    width = max(len(ids) for ids, *_ in rows)
    ids = torch.tensor([ids + [lm.end_of_text] * (width - len(ids)) for ids, *_ in rows])
    positions, good, bad = ([row[k] for row in rows] for k in (1, 2, 3))
    return WordChoice(ids, positions, good, bad, np.array(good) != np.array(bad), logit_diff(positions, good, bad))


@torch.no_grad()
def transcribe_and_score(lm: Any, clips: Sequence[Any], choice: WordChoice, *, max_new_tokens: int = 48,
                         batch_size: int = run.GREEDY_BATCH) -> tuple[list[str], Any]:
    """One encoder pass per clip gives both its greedy transcript and its teacher-forced :class:`WordChoice`
    measure; encoder outputs and transcripts are read from the store where this model already computed them (in
    any chapter or build). Returns ``(transcripts, logit differences (clips,) as a numpy array)``."""
    if len(clips) != len(choice.ids):
        raise ValueError(f"transcribe_and_score: {len(clips)} clips for a WordChoice of {len(choice.ids)} clips")
    texts, diffs = [], []
    for start in range(0, len(clips), batch_size):
        rows = slice(start, start + batch_size)
        states = store.encoded(lm, clips[rows]).states
        texts += [t.text for t in store.transcripts(lm, clips[rows], max_new_tokens=max_new_tokens, states=states)]
        ids = choice.ids[rows]
        part = logit_diff(choice.positions[rows], choice.spoken[rows], choice.competing[rows])
        diffs.append(part(run.teacher_force(lm, states, ids), ids).cpu())
    return texts, torch.cat(diffs).numpy()


# ---------------------------------------------------------------------------------------------------------------
# A clean run and its reference run, teacher-forced on the clean transcript
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class CleanAndReference:
    """Clips and their reference clips (white noise of each clip's length and level by default), both
    teacher-forced on the clean run's own greedy transcript: the setting of a noising or denoising sweep.

    Attributes:
        lm: the model that ran.
        clean, reference: :class:`~asrinterp_utils.run.Encoded` runs of the clips and of their references.
        ids: ``(clips, tokens)``: prompt + clean greedy transcript + ``<|endoftext|>`` (padded with it).
        clean_cache, reference_cache: the ``points`` of each run, teacher-forced on ``ids``
            (:class:`~asrinterp_utils.cache.ActivationCache`: a patch source).
        clean_logits, reference_logits: ``(clips, tokens, vocab)``.
        metric: the mean log-probability of each clip's transcript tokens and its end (:func:`token_logprob`, the
            padding after a shorter transcript's end not scored).
        clean_metric, reference_metric: ``(clips,)``.
    """

    lm: Any
    clean: Any
    reference: Any
    ids: torch.Tensor
    clean_cache: Any
    reference_cache: Any
    clean_logits: torch.Tensor
    reference_logits: torch.Tensor
    metric: Metric
    clean_metric: torch.Tensor
    reference_metric: torch.Tensor

    def subset(self, rows: Sequence[int]) -> "CleanAndReference":
        """The same experiment on the clips ``rows`` only (no model run): e.g. a costly check on the first few
        clips. The metric scores each transcript up to its end, so a clip's numbers do not change with the batch."""
        rows = list(rows)
        if not rows or min(rows) < 0 or max(rows) >= len(self.ids):
            raise ValueError(f"subset: give clip indices in 0..{len(self.ids) - 1}; got {rows[:8]}")
        return CleanAndReference(self.lm, self.clean.select(rows), self.reference.select(rows), self.ids[rows],
                                 self.clean_cache.rows(rows), self.reference_cache.rows(rows),
                                 self.clean_logits[rows], self.reference_logits[rows], self.metric,
                                 self.clean_metric[rows], self.reference_metric[rows])


def white_noise_references(clips: Sequence[Any], *, draw: int = 0) -> list:
    """The paper's reference input for each clip: Gaussian white noise of the clip's length and RMS level.

    ``draw`` 0 is the noise every chapter uses (clip ``i`` seeded ``i``, what ``reference="white_noise"`` means);
    other draws are independent noise (clip ``i`` seeded ``(draw, i)``), to see how much a result owes to one
    random draw."""
    from .audio import white_noise_like

    if isinstance(draw, bool) or int(draw) != draw or draw < 0:
        raise ValueError(f"white_noise_references: draw must be a whole number >= 0; got {draw!r}")
    return [white_noise_like(c, seed=i if draw == 0 else [int(draw), i]) for i, c in enumerate(clips)]


def _reference_clips(clips: list, reference: Any) -> list:
    """One reference clip per clip: ``"white_noise"`` (noise of each clip's length and level) or the list given."""
    if isinstance(reference, str):
        if reference != "white_noise":
            raise ValueError(f"reference must be a list of clips or 'white_noise', got {reference!r}")
        return white_noise_references(clips)
    reference = list(reference)
    if len(reference) != len(clips):
        raise ValueError(f"give one reference clip per clip: {len(clips)} clips, {len(reference)} references")
    return reference


@torch.no_grad()
def clean_and_reference(lm: Any, clips: Sequence[Any], *, points: Any = "dec.*", reference: Any = "white_noise",
                        max_new_tokens: int = 128) -> CleanAndReference:
    """Encode ``clips`` (1-D float32 arrays at 16 kHz) and their references (``"white_noise"`` or one clip per
    clip) once each, decode the clean transcripts greedily, and teacher-force both runs on them with the hook
    points ``points`` cached: :class:`CleanAndReference`."""
    from .cache import cache_activations

    clips = list(clips)
    reference = _reference_clips(clips, reference)
    clean = store.encoded(lm, clips)  # read from the store where another chapter encoded these clips
    features, n_frames, clean_states = clean.features, clean.n_frames, clean.states
    ref_features, ref_frames = lm.features(reference)
    names = [points] if isinstance(points, str) else list(points)
    encoder_points = any(p.side == "enc" for name in names for p in resolve_hook_points(lm, name))
    ids = run.greedy(lm, clean_states, max_new_tokens=max_new_tokens).ids  # outside the cache: one pass per run
    runs, caches, logits = [], [], []
    for feats, frames, states in ((features, n_frames, clean_states), (ref_features, ref_frames, None)):
        with cache_activations(lm, names) as cache:
            if states is None or encoder_points:  # encoder points are read off this run's encoder pass
                states = run.encode_features(lm, feats)
            logits.append(run.teacher_force(lm, states, ids))
        runs.append(run.Encoded(feats, frames, states))
        caches.append(cache)
    metric = token_logprob(start=len(lm.prompt_ids()), end_of_text=lm.end_of_text)
    return CleanAndReference(lm, runs[0], runs[1], ids, caches[0], caches[1], logits[0], logits[1], metric,
                             metric(logits[0], ids), metric(logits[1], ids))


# ---------------------------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------------------------

def head_targets(model: Any, point: str = "cross_head_out", source: Any = None,
                 layers: Sequence[int] | None = None, positions: Any = None) -> list[PatchTarget]:
    """One target per (layer, head) of a per-head decoder point (``cross_head_out`` or ``self_head_out``) or encoder
    point (``head_out``): replace that head by ``source`` (a cache of another run, or a tensor), or zero it when
    ``source`` is None. Labels are like ``"dec.3.cross_head_out[h5]"``."""
    if point not in ("cross_head_out", "self_head_out", "head_out"):
        raise ValueError(f"head_targets: point must be a per-head point, 'cross_head_out' or 'self_head_out' (decoder) "
                         f"or 'head_out' (encoder); got {point!r}")
    side = "enc" if point == "head_out" else "dec"
    core = whisper_core(model)
    stack = core.encoder.layers if side == "enc" else core.decoder.layers
    n_heads = (stack[0].self_attn if side == "enc" or point == "self_head_out" else stack[0].encoder_attn).num_heads
    bad = [layer for layer in (layers or []) if not 0 <= layer < len(stack)]
    if bad:
        raise ValueError(f"head_targets: layers must be in 0..{len(stack) - 1} ({side} layers); got {bad}")
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
# Sweeps
# ---------------------------------------------------------------------------------------------------------------

def stacked_interventions(chunk: Sequence[PatchTarget], batch: int) -> dict[str, list[Intervention]]:
    """The interventions of K targets (a point may hold one or a list, as :func:`combine` makes them), each
    restricted to its own rows of a K * batch stack: target ``k`` to rows ``k * batch`` to ``(k + 1) * batch - 1``.
    A target that sets rows itself is refused."""
    grouped: dict[str, list[Intervention]] = {}
    for k, target in enumerate(chunk):
        rows = list(range(k * batch, (k + 1) * batch))
        for name, iv in _interventions(target):
            if iv.rows is not None:
                raise ValueError(f"{target.label}: rows are set by the sweep; leave Intervention.rows as None")
            grouped.setdefault(name, []).append(Intervention(iv.mode, iv.value, iv.heads, iv.positions, rows))
    return grouped


def _inputs(model: Any, inputs: Any, decoder_input_ids: torch.Tensor, caller: str
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(features, ids, states)`` on the model's device: ``inputs`` is log-mel ``(batch, n_mels, 3000)``, or a
    :class:`~asrinterp_utils.run.Encoded` whose ``states`` the decoder then reads as they are (``states`` None
    otherwise), checked against ``decoder_input_ids (batch, tokens)``, one row per clip."""
    hf = hf_model(model)
    param = next(hf.parameters())
    states = None
    if isinstance(inputs, run.Encoded):
        inputs, states = inputs.features, inputs.states
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 3:
        got = tuple(inputs.shape) if hasattr(inputs, "shape") else type(inputs).__name__
        raise ValueError(f"{caller}: input_features must be log-mel (batch, n_mels, 3000), as lm.features(clips) gives "
                         f"them, or the run.Encoded of the clips; got {got}")
    if not isinstance(decoder_input_ids, torch.Tensor) or decoder_input_ids.ndim != 2:
        got = tuple(decoder_input_ids.shape) if hasattr(decoder_input_ids, "shape") else type(decoder_input_ids).__name__
        raise ValueError(f"{caller}: decoder_input_ids must be (batch, tokens); got {got}")
    if len(decoder_input_ids) != len(inputs) or (states is not None and len(states) != len(inputs)):
        raise ValueError(f"{caller}: {len(inputs)} clips of input features"
                         + (f" ({len(states)} rows of encoder states)" if states is not None else "")
                         + f" but {len(decoder_input_ids)} rows of decoder_input_ids: give one row per clip")
    feats = inputs.to(device=param.device, dtype=param.dtype)
    if states is not None:
        states = states.to(device=param.device, dtype=param.dtype)
    return feats, decoder_input_ids.to(param.device), states


@torch.no_grad()
def run_sweep(model: Any, input_features: Any, decoder_input_ids: torch.Tensor,
              targets: Sequence[PatchTarget], metric: Metric, *, batch_size: int = 16,
              method: str = "batched", progress: bool = False) -> SweepResult:
    """Evaluate ``metric`` with each target patched, teacher-forced on ``decoder_input_ids``.

    Args:
        input_features: ``(batch, n_mels, 3000)`` log-mel features, or the clips' :class:`~asrinterp_utils.run.Encoded`
            (e.g. ``CleanAndReference.clean``), whose encoder output then serves every decoder-only target and the
            baseline instead of a new encoder pass (targets that patch the encoder run it from the features).
        decoder_input_ids: ``(batch, tokens)`` (prompt + transcript).
        targets: what to patch (see :func:`head_targets`, :func:`component_targets`).
        metric: ``metric(logits, ids) -> (batch,)``.
        batch_size: targets stacked per forward (the forward's batch is ``batch_size * batch``).
        method: ``"batched"`` (default) or ``"naive"`` (one full forward per target: the reference).
    """
    hf = hf_model(model)
    feats, ids, given_states = _inputs(model, input_features, decoder_input_ids, "run_sweep")
    batch = feats.shape[0]
    values = torch.empty(len(targets), batch)
    if method == "naive":
        baseline = _check_metric(metric(hf(feats, decoder_input_ids=ids).logits, ids), batch)
        for i, target in enumerate(_progress(targets, progress, "naive sweep")):
            with patch(model, dict(target.interventions)):
                values[i] = metric(hf(feats, decoder_input_ids=ids).logits, ids).cpu()
        return SweepResult([t.label for t in targets], values, baseline)
    if method != "batched":
        raise ValueError(f"method must be 'batched' or 'naive', got {method!r}")

    sides = [{p.side for name in t.interventions for p in resolve_hook_points(model, name)} for t in targets]
    decoder_only = all(side <= {"dec"} for side in sides)
    if all(side == {"enc"} for side in sides) and targets:
        return _encoder_sweep(model, feats, ids, targets, metric, batch_size, progress)
    # decoder-only targets: one encoder output for every target (the caller's, where given)
    encoder_out = given_states if given_states is not None else run.encode_features(model, feats)
    baseline = _check_metric(metric(run.teacher_force(model, encoder_out, ids), ids), batch)
    chunks = [targets[i:i + batch_size] for i in range(0, len(targets), batch_size)]
    for c, chunk in enumerate(_progress(chunks, progress, "batched sweep")):
        k = len(chunk)
        stacked_ids = ids.repeat(k, 1)  # row k * batch + b: target k, clip b
        plan = stacked_interventions(chunk, batch)
        if decoder_only:  # the k copies read one projection of the encoder output
            logits = run.teacher_force(model, encoder_out, stacked_ids, kv_rows=torch.arange(k * batch) % batch,
                                       patches=plan)
        else:
            states = run.encode_features(model, feats.repeat(k, 1, 1), patches=plan)
            logits = run.teacher_force(model, states, stacked_ids, patches=plan)
        start = c * batch_size
        values[start:start + k] = metric(logits, stacked_ids).view(k, batch).cpu()
    return SweepResult([t.label for t in targets], values, baseline)


def _check_metric(value: Any, batch: int) -> torch.Tensor:
    """The metric's value on the unpatched run, checked: one number per clip, ``(batch,)``."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (batch,):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"metric(logits, ids) must give one number per clip, shape ({batch},); it gave {shape}. "
                         "Reduce over positions inside the metric, not over clips (see token_logprob).")
    return value.cpu()


def _first_encoder_layer(model: Any, target: PatchTarget) -> int:
    """The first encoder layer a target touches (``enc.final`` counts as one past the last layer)."""
    n_layers = len(whisper_core(model).encoder.layers)
    return min(n_layers if p.layer is None else p.layer
               for name in target.interventions for p in resolve_hook_points(model, name))


def _encoder_sweep(model: Any, feats: torch.Tensor, ids: torch.Tensor, targets: Sequence[PatchTarget],
                   metric: Metric, batch_size: int, progress: bool) -> SweepResult:
    """Encoder-only targets, reusing the unpatched prefix: a target that first touches layer ``L`` leaves layers
    ``0 .. L-1`` (and the convolutional front end) as they were, so the clean ``enc.{L}.resid_pre`` is computed once
    and the stacked targets run from layer ``L`` on. Targets are grouped by first layer, ``batch_size`` per
    forward."""
    from .cache import cache_activations

    core = whisper_core(model)
    encoder = core.encoder
    last = len(encoder.layers) - 1
    with cache_activations(model, ["enc.*.resid_pre", f"enc.{last}.resid_post"]) as prefix:
        clean_out = run.encode_features(model, feats)
    batch = feats.shape[0]
    baseline = _check_metric(metric(run.teacher_force(model, clean_out, ids), ids), batch)
    values = torch.empty(len(targets), batch)
    first = [_first_encoder_layer(model, t) for t in targets]
    order = sorted(range(len(targets)), key=lambda i: first[i])
    chunks: list[list[int]] = []
    for i in order:  # chunks of targets that share their first layer
        if chunks and first[chunks[-1][0]] == first[i] and len(chunks[-1]) < batch_size:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    for chunk in _progress(chunks, progress, "encoder sweep"):
        k, start = len(chunk), first[chunk[0]]
        name = f"enc.{start}.resid_pre" if start <= last else f"enc.{last}.resid_post"  # enc.final: LN input
        hidden = prefix[name].to(feats.device, feats.dtype).repeat(k, 1, 1)
        with run.attention_mode(model, "enc"), patch(model, stacked_interventions([targets[i] for i in chunk], batch)):
            for layer in encoder.layers[start:]:
                hidden = layer(hidden, None)
            hidden = encoder.layer_norm(hidden)
        logits = run.teacher_force(model, hidden, ids.repeat(k, 1))
        values[chunk] = metric(logits, ids.repeat(k, 1)).view(k, batch).cpu()
    return SweepResult([t.label for t in targets], values, baseline)


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc)


# ---------------------------------------------------------------------------------------------------------------
# Patched generation: a reference run that steps with the patched one
# ---------------------------------------------------------------------------------------------------------------

class _Reference:
    """The value a component takes in the reference run (see :func:`generate_sweep`)."""

    def __repr__(self) -> str:
        return "REFERENCE"


REFERENCE = _Reference()
"""Patch source meaning "this component's value in the reference run", as in ``replace(REFERENCE)``, or
``component_targets(lm, "dec.*.cross_attn_out", source=REFERENCE)``, ``head_targets(..., source=REFERENCE)``."""


@dataclass
class GenerationSweep:
    """Greedy transcripts with each target patched.

    ``token_ids[i][b]`` and ``texts[i][b]``: the text tokens and text for target ``i`` on clip ``b``;
    ``baseline_*``: unpatched; ``reference_texts[b]``: what the model writes for the reference input itself (None
    when the sweep was asked not to decode it).
    """

    labels: list[str]
    token_ids: list[list[list[int]]]
    texts: list[list[str]]
    baseline_ids: list[list[int]]
    baseline_texts: list[str]
    reference_texts: list[str] | None
    max_new_tokens: int

    def to_frame(self):
        """One row per (target, clip): ``target, clip, text, baseline_text, n_tokens, hit_limit, loop,
        baseline_loop`` (loops by :func:`asrinterp_utils.metrics.is_repetitive`; ``hit_limit``: the text ran to
        ``max_new_tokens`` without ending)."""
        import pandas as pd

        from .metrics import is_repetitive

        base_loop = [is_repetitive(t) for t in self.baseline_texts]
        rows = []
        for label, ids_per_clip, texts in zip(self.labels, self.token_ids, self.texts):
            for b, (ids, text) in enumerate(zip(ids_per_clip, texts)):
                rows.append({"target": label, "clip": b, "text": text, "baseline_text": self.baseline_texts[b],
                             "n_tokens": len(ids), "hit_limit": len(ids) >= self.max_new_tokens,
                             "loop": is_repetitive(text), "baseline_loop": base_loop[b]})
        return pd.DataFrame(rows)


def combine(*targets: PatchTarget, label: str | None = None) -> PatchTarget:
    """One target that applies the interventions of several together (e.g. a layer's cross-attention and a head).
    Two targets on the same hook point are applied in order."""
    if not targets:
        raise ValueError("combine: give the targets to combine (at least one PatchTarget)")
    merged: dict[str, list[Intervention]] = {}
    for t in targets:
        for name, iv in t.interventions.items():
            merged.setdefault(name, []).extend(iv if isinstance(iv, (list, tuple)) else [iv])
    return PatchTarget(label or " + ".join(t.label for t in targets), merged)


def _target_side(model: Any, target: PatchTarget) -> set[str]:
    return {p.side for name in target.interventions for p in resolve_hook_points(model, name)}


def _interventions(target: PatchTarget) -> list[tuple[str, Intervention]]:
    """``(point name, intervention)`` for each of the target's interventions (a name may hold one or a list)."""
    return [(name, iv) for name, ivs in target.interventions.items()
            for iv in (ivs if isinstance(ivs, (list, tuple)) else [ivs])]


def _rowwise(target: PatchTarget, dst: list[int] | None, src: Any) -> dict[str, list[Intervention]]:
    """The target's interventions restricted to rows ``dst`` (None: every row). A ``REFERENCE`` value reads rows
    ``src`` of the same batch (a list of row indices), or ``src`` is a cache of the reference clips' run, row for
    row with the patched clips."""
    out: dict[str, list[Intervention]] = {}
    for name, iv in _interventions(target):
        if iv.rows is not None:
            raise ValueError(f"{target.label}: rows are set by the sweep; leave Intervention.rows as None")
        if iv.value is REFERENCE:
            if iv.mode != "replace":
                raise ValueError(f"{target.label}: REFERENCE is a source for replace(), not {iv.mode}()")
            iv = (Intervention("from_rows", src, iv.heads, iv.positions, dst) if isinstance(src, list)
                  else Intervention("replace", src, iv.heads, iv.positions, dst))
        else:
            iv = Intervention(iv.mode, iv.value, iv.heads, iv.positions, dst)
        out.setdefault(name, []).append(iv)
    return out


def _merge(into: dict[str, list[Intervention]], more: dict[str, list[Intervention]]) -> None:
    for name, ivs in more.items():
        into.setdefault(name, []).extend(ivs)


def _reads_reference(target: PatchTarget) -> bool:
    return any(iv.value is REFERENCE for _, iv in _interventions(target))


def _patched_greedy(lm: Any, clean_states: torch.Tensor, ref_states: torch.Tensor, chunk: Sequence[PatchTarget],
                    max_new_tokens: int, *, reference_texts: bool = False
                    ) -> tuple[list[list[list[int]]], list[list[int]] | None]:
    """Greedy decoding of ``K = len(chunk)`` patched copies of a batch of ``B`` clips, each beside a reference row
    that is fed the same tokens (:func:`asrinterp_utils.run.greedy` with ``follow``). Row ``k * B + b`` is target
    ``k`` on clip ``b`` and reads ``clean_states[b]``; a target that reads ``REFERENCE`` gets ``B`` reference rows
    after them, which read ``ref_states`` and follow its rows. With ``reference_texts``, ``B`` more rows decode the
    reference clips themselves, unpatched. The cross-attention keys and values of the ``2B`` encoder outputs are
    projected once. Returns ``([target][clip] -> text token ids, [clip] -> reference text ids or None)``."""
    batch, k = len(clean_states), len(chunk)
    kv_rows, follow = [b for _ in range(k) for b in range(batch)], list(range(k * batch))
    plan: dict[str, list[Intervention]] = {}
    for i, target in enumerate(chunk):
        dst = list(range(i * batch, (i + 1) * batch))
        src = list(range(len(kv_rows), len(kv_rows) + batch)) if _reads_reference(target) else []
        if src:
            kv_rows += [batch + b for b in range(batch)]
            follow += dst
        _merge(plan, _rowwise(target, dst, src))
    leaders = list(range(len(kv_rows), len(kv_rows) + batch)) if reference_texts else []
    kv_rows += [batch + b for b in range(len(leaders))]
    follow += leaders
    decoded = run.greedy(lm, torch.cat([clean_states, ref_states]), max_new_tokens=max_new_tokens,
                         kv_rows=kv_rows, follow=follow, patches=plan)
    texts = [[decoded.text_ids[i * batch + b] for b in range(batch)] for i in range(k)]
    return texts, ([decoded.text_ids[r] for r in leaders] if reference_texts else None)


@dataclass
class EncodedClips:
    """Clips and their reference clips, encoded once, for several :func:`generate_sweep` calls on the same clips.

    ``clean_features``/``reference_features``: log-mel ``(batch, mels, 3000)``; ``clean_states``/
    ``reference_states``: encoder outputs ``(batch, frames, d_model)``. The unpatched transcripts that every sweep
    reports are computed on first use and kept here too. Build with :func:`encode_clips`.
    """

    clean_features: torch.Tensor
    reference_features: torch.Tensor
    clean_states: torch.Tensor
    reference_states: torch.Tensor
    model_id: int
    _decoded: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.clean_features)

    def decoded(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key`` (the sweeps' unpatched and reference transcripts)."""
        if key not in self._decoded:
            self._decoded[key] = compute()
        return self._decoded[key]

    def with_reference(self, lm: Any, reference: Sequence[Any], *, use_store: bool = True) -> "EncodedClips":
        """The same clips beside other reference clips (one per clip, e.g. another draw of
        :func:`white_noise_references`): the clean encoder outputs and the unpatched transcripts already decoded
        are shared, only the references are encoded."""
        if id(lm.model) != self.model_id:
            raise ValueError("with_reference: these EncodedClips were encoded by another model")
        reference = list(reference)
        if len(reference) != len(self):
            raise ValueError(f"with_reference: give one reference clip per clip: {len(self)} clips, "
                             f"{len(reference)} references")
        ref = store.encoded(lm, reference, use_store=use_store)
        return EncodedClips(self.clean_features, ref.features, self.clean_states, ref.states, self.model_id,
                            {k: v for k, v in self._decoded.items() if k[0] == "baseline"})


@torch.no_grad()
def encode_clips(lm: Any, audio_list: Sequence[Any], reference: Any = "white_noise", *,
                 use_store: bool = True) -> EncodedClips:
    """Encode clips (1-D float32 arrays at 16 kHz) and their references (``"white_noise"``: noise of each clip's
    length and level; or one clip per clip) once, for several :func:`generate_sweep` calls. Encoder outputs are
    read from the :mod:`~asrinterp_utils.store` where another run filed them (``use_store=False``: always encode)."""
    clips = list(audio_list)
    reference = _reference_clips(clips, reference)
    clean, ref = store.encoded(lm, clips, use_store=use_store), store.encoded(lm, reference, use_store=use_store)
    return EncodedClips(clean.features, ref.features, clean.states, ref.states, id(lm.model))


def _encoder_patched(lm: Any, clean_feats: torch.Tensor, ref_feats: torch.Tensor, targets: Sequence[PatchTarget],
                     decode: Callable[[torch.Tensor], list], encoder_rows: int, progress: bool, *,
                     reference_output: bool = True) -> tuple[list[list[list[int]]], torch.Tensor | None]:
    """Greedy transcripts with encoder targets patched, in blocks of clips: a block's reference clips run once,
    caching the points the targets read from ``REFERENCE`` (an encoder activation depends on its own clip only,
    so this is the value a reference row stacked beside each patched row would compute), then each target runs
    on the block's clean clips. One reference pass per clip and one patched pass per target and clip (stacking a
    reference row beside every patched row took two per target and clip). Without ``reference_output`` the
    reference pass stops after the deepest layer the targets read. Returns ``([target][clip] -> text token ids,
    the reference clips' encoder output (batch, frames, d_model), or None without reference_output)``."""
    from .cache import cache_activations

    read = {p for t in targets for name, iv in _interventions(t) if iv.value is REFERENCE
            for p in resolve_hook_points(lm, name)}
    points = sorted(p.name for p in read)
    stop = None
    if not reference_output:  # as deep as the deepest point read (enc.final, layer None: the whole encoder)
        stop = 1 + max(p.layer for p in read) if read and all(p.layer is not None for p in read) else None
    results: list[list[Any]] = [[None] * len(clean_feats) for _ in targets]
    ref_states = []
    block = max(1, encoder_rows)
    for start in _progress(range(0, len(clean_feats), block), progress, "encoder patches"):
        rows = slice(start, start + block)
        # no cache where no target reads the reference (reference_cache is then None), and then no reference
        # pass at all unless its output is wanted
        with (cache_activations(lm, points) if points else contextlib.nullcontext()) as reference_cache:
            if points or reference_output:
                ref_states.append(run.encode_features(lm, ref_feats[rows], stop_at_layer=stop))
        for i, target in enumerate(targets):
            patched = run.encode_features(lm, clean_feats[rows], patches=_rowwise(target, None, reference_cache))
            results[i][rows] = decode(patched)
    return results, (torch.cat(ref_states) if reference_output else None)


@torch.no_grad()
def generate_sweep(lm: Any, audio_list: Sequence[Any], targets: Sequence[PatchTarget], *,
                   reference: Any = "white_noise", max_new_tokens: int = 96, batch_rows: int = run.SWEEP_ROWS,
                   encoder_rows: int = 16, method: str = "batched", reference_texts: bool = True,
                   progress: bool = False) -> GenerationSweep:
    """Greedy transcripts of every clip with each target patched during generation.

    ``REFERENCE`` in a target means the component's value in the **reference run**: the same model on the reference
    clip (white noise of the same length and level by default, or one clip per clip), fed the *same decoder tokens*
    as the patched run. The reference run is stacked beside the patched one and steps with it, so at every step the
    patched component reads what it would compute if the audio were the reference, everything else equal.
    Patching every layer's ``cross_attn_out`` (the only way audio enters the decoder) thus reproduces the reference
    clip's own transcript exactly.

    Targets may patch decoder points (the encoder runs once per clip and the cross-attention keys and values are
    projected once and shared by all targets) or encoder points (the reference clips' encoder runs once, caching
    what the targets read, then each target's encoder runs on the clean clips); not both in one sweep.

    Args:
        audio_list: clips, 1-D float32 arrays at 16 kHz; or :class:`EncodedClips` from :func:`encode_clips`, to
            reuse the encoder outputs (and the unpatched transcripts) across several sweeps on the same clips.
        targets: :class:`PatchTarget` s (see :func:`component_targets`, :func:`head_targets`, :func:`combine`).
        reference: ``"white_noise"`` or a list of clips, one per clip.
        max_new_tokens: most tokens per transcript.
        batch_rows: most decoder rows per forward (each target and clip takes two: patched and reference;
            default ``run.SWEEP_ROWS``).
        encoder_rows: most clips per encoder forward, for encoder targets.
        method: ``"batched"`` or ``"naive"`` (one clip and one target at a time, encoder rerun, nothing shared).
        reference_texts: also decode the reference clips themselves (``GenerationSweep.reference_texts``; None
            without it). Leaving them out saves a decode of every reference clip and, for encoder targets on clips
            (not :class:`EncodedClips`), most of the reference pass: it stops after the deepest layer the targets
            read.

    For encoder targets on clips given as arrays, the unpatched transcripts are read from the
    :mod:`~asrinterp_utils.store` where the model already decoded them with the same ``max_new_tokens`` (and filed
    otherwise); for decoder targets they ride along in the first batch of patched rows.
    """
    if method not in ("batched", "naive"):
        raise ValueError(f"method must be 'batched' or 'naive', got {method!r}")
    batch_rows = check_whole(batch_rows, "generate_sweep: batch_rows", 1, " (decoder rows per forward)")
    sides = set().union(*(_target_side(lm, t) for t in targets)) if targets else set()
    if sides == {"enc", "dec"}:
        raise ValueError("generate_sweep patches either encoder points or decoder points in one sweep, not both; "
                         "run two sweeps")
    encoder_batched = sides == {"enc"} and method == "batched"
    if isinstance(audio_list, EncodedClips):
        if audio_list.model_id != id(lm.model):
            raise ValueError("these EncodedClips were encoded by another model: call encode_clips with this one")
        if not (isinstance(reference, str) and reference == "white_noise"):
            raise ValueError("the reference of EncodedClips is fixed by encode_clips; leave reference out here")
        encoded = audio_list
    elif not encoder_batched:  # batched encoder targets: the reference clips' pass below gives their outputs
        encoded = encode_clips(lm, audio_list, reference)
    decode = lambda st: run.greedy(lm, st, max_new_tokens=max_new_tokens).text_ids  # noqa: E731
    if encoder_batched:
        if not isinstance(audio_list, EncodedClips):
            clips = list(audio_list)
            clean = store.encoded(lm, clips)
            ref_feats, _ = lm.features(_reference_clips(clips, reference))
            results, ref_states = _encoder_patched(lm, clean.features, ref_feats, targets, decode, encoder_rows,
                                                   progress, reference_output=reference_texts)
            encoded = EncodedClips(clean.features, ref_feats, clean.states, ref_states, id(lm.model))
            encoded._decoded["baseline", "enc", max_new_tokens] = [  # the store's, or decoded now and filed
                t.text_ids for t in store.transcripts(lm, clips, max_new_tokens=max_new_tokens, states=clean.states)]
        else:
            results, _ = _encoder_patched(lm, encoded.clean_features, encoded.reference_features, targets, decode,
                                          encoder_rows, progress)
    clean_feats, ref_feats = encoded.clean_features, encoded.reference_features
    clean_states, ref_states = encoded.clean_states, encoded.reference_states
    batch = len(clean_feats)
    text = lambda ids: run.text_of(lm.tokenizer, ids)  # noqa: E731
    reference_key = ("reference", max_new_tokens)

    if sides == {"enc"}:
        baseline = encoded.decoded(("baseline", "enc", max_new_tokens), lambda: decode(clean_states))
        if method == "naive":
            results = []
            for target in _progress(targets, progress, "encoder patches (naive)"):
                per_clip = []
                for b in range(batch):  # one clip at a time, its reference stacked beside it
                    pair = torch.cat([clean_feats[b:b + 1], ref_feats[b:b + 1]])
                    per_clip.append(decode(run.encode_features(lm, pair, patches=_rowwise(target, [0], [1]))[:1])[0])
                results.append(per_clip)
    else:
        key = ("baseline", "dec", max_new_tokens)
        results = []
        if method == "naive":
            baseline = encoded.decoded(key, lambda: decode(clean_states))
            for target in _progress(targets, progress, "decoder patches (naive)"):
                per_clip = []
                for b in range(batch):
                    st = run.encode_features(lm, clean_feats[b:b + 1])  # nothing reused
                    rs = run.encode_features(lm, ref_feats[b:b + 1])
                    texts, _ = _patched_greedy(lm, st, rs, [target], max_new_tokens)
                    per_clip.append(texts[0][0])  # the one target, the one clip
                results.append(per_clip)
        else:
            # The unpatched rows ride along in the first batch (an empty target) unless they are known already.
            known = key in encoded._decoded
            queue = ([] if known else [PatchTarget("unpatched", {})]) + list(targets)
            per_forward = max(1, batch_rows // (2 * batch))
            chunks = [queue[i:i + per_forward] for i in range(0, len(queue), per_forward)]
            for c, chunk in enumerate(_progress(chunks, progress, "decoder patches")):
                # The reference clips' own transcripts ride along in the first batch too.
                with_references = c == 0 and reference_texts and reference_key not in encoded._decoded
                texts, references = _patched_greedy(lm, clean_states, ref_states, chunk, max_new_tokens,
                                                    reference_texts=with_references)
                results.extend(texts)
                if with_references:
                    encoded._decoded[reference_key] = [text(ids) for ids in references]
            if not known:
                encoded._decoded[key] = results.pop(0)
            baseline = encoded._decoded[key]
    references = (encoded.decoded(reference_key, lambda: [text(ids) for ids in decode(ref_states)])
                  if reference_texts else None)
    return GenerationSweep(
        labels=[t.label for t in targets], token_ids=results,
        texts=[[text(ids) for ids in per_clip] for per_clip in results],
        baseline_ids=baseline, baseline_texts=[text(ids) for ids in baseline],
        reference_texts=references, max_new_tokens=max_new_tokens)


# ---------------------------------------------------------------------------------------------------------------
# Attribution patching: a first-order estimate of every patch from one forward and one backward pass
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class AttributionResult:
    """``estimates[name]``: the linear estimate of the metric's change when ``name`` is replaced by the reference,
    ``(batch, heads)`` for a per-head point, ``(batch,)`` otherwise; ``baseline``: the clean metric ``(batch,)``."""

    estimates: dict[str, torch.Tensor]
    baseline: torch.Tensor

    def labels_and_values(self) -> tuple[list[str], torch.Tensor]:
        """Labels in :func:`head_targets` / :func:`component_targets` form and the estimates ``(targets, batch)``,
        in the same order as those functions list them, so they line up with a :class:`SweepResult`."""
        labels, rows = [], []
        for name, est in self.estimates.items():
            if est.dim() == 2:
                for h in range(est.shape[1]):
                    labels.append(f"{name}[h{h}]")
                    rows.append(est[:, h])
            else:
                labels.append(name)
                rows.append(est)
        return labels, torch.stack(rows)


def attribution_patching(model: Any, input_features: Any, decoder_input_ids: torch.Tensor,
                         names: Sequence[str] | str, reference: Any, metric: Metric) -> AttributionResult:
    """Attribution patching (Nanda 2023; Syed et al. 2023): estimate, for every hook point in ``names`` and every
    head of a per-head point, how much ``metric`` would change if that activation took its ``reference`` value,
    as ``grad(metric) . (reference - clean)`` at the clean run, summed over positions and features.

    One forward and one backward pass give every estimate at once; exact patching (:func:`run_sweep`) needs one
    forward per target. The estimate is exact for a metric linear in the activation and degrades as the patch
    moves the model far from the clean run: compare with :func:`run_sweep` before trusting it.

    Args:
        input_features: ``(batch, n_mels, 3000)``, or the clips' :class:`~asrinterp_utils.run.Encoded` (its encoder
            output is reused when every point is a decoder point); decoder_input_ids: ``(batch, tokens)`` (teacher
            forcing).
        names: hook points (patterns allowed), e.g. ``"dec.*.cross_head_out"``.
        reference: an :class:`~asrinterp_utils.cache.ActivationCache` of the reference run holding ``names``,
            laid out like the clean run (same tokens; e.g. the white-noise run teacher-forced on the same ids).
        metric: ``metric(logits, ids) -> (batch,)``.
    """
    hf = hf_model(model)
    points = resolve_hook_points(model, names)
    captured: dict[str, torch.Tensor] = {}

    def capture(name):
        def fn(act, ctx):
            captured[name] = act
            return act
        return fn

    from .hooks import apply
    feats, ids, given_states = _inputs(model, input_features, decoder_input_ids, "attribution_patching")
    # decoder points only: the encoder runs once without a graph (nothing it computes needs a gradient), or not at
    # all where the caller gives its output
    encoder_out = None
    if all(p.side == "dec" for p in points):
        encoder_out = given_states if given_states is not None else run.encode_features(model, feats)
    with torch.enable_grad(), patch(model, {p.name: apply(capture(p.name)) for p in points}):
        if encoder_out is None:
            logits = hf(feats, decoder_input_ids=ids).logits
        else:
            logits = hf(encoder_outputs=(encoder_out,), decoder_input_ids=ids).logits
        value = metric(logits, ids)
        grads = torch.autograd.grad(value.sum(), [captured[p.name] for p in points])
    estimates = {}
    for p, grad in zip(points, grads):
        delta = (reference[p.name].to(grad.device, grad.dtype) - captured[p.name].detach())
        contribution = (grad * delta).float()
        if p.is_heads:  # (batch, positions, heads, d_head) -> (batch, heads)
            estimates[p.name] = contribution.sum(dim=(1, 3)).cpu()
        else:  # (batch, positions, d) -> (batch,)
            estimates[p.name] = contribution.flatten(1).sum(dim=1).cpu()
    return AttributionResult(estimates, value.detach().cpu())
