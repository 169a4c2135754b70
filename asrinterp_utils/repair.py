"""Repairing hallucinations: Whisper's own rule for saying nothing, and interventions that change what it lets
through, measured on what they fix and on what they cost.

>>> out = transcribe_with_silence(lm, clips)                         # transcript, no_speech_prob, avg_logprob, ...
>>> said_something(out).mean()                                      # on non-speech: the hallucination rate
>>> sweep = patching.run_sweep(lm, encoded, prompt_ids(lm, len(clips)), patching.head_targets(lm, "self_head_out"),
...                            no_speech_logodds(lm))                # which heads keep the model from silence
>>> direction = mean_difference(non_speech_states, speech_states)   # a probe direction, (d_model,)
>>> transcribe_with_silence(lm, clips, patches={"dec.2.resid_post": steer_direction(direction.unit,
...                                                 add=direction.gap, positions=[0])})

**How Whisper says nothing.** Greedy decoding cannot end at once: the first step forbids ``<|endoftext|>`` (the
generation config's ``begin_suppress_tokens``), so every clip gets some text. Whisper's reference implementation
(openai-whisper's ``transcribe``) drops a window's text when two things hold: the **no-speech probability**, the
probability of ``<|nocaptions|>`` (``<|nospeech|>`` in later vocabularies) after ``<|startoftranscript|>``, read at
position 0 over the whole vocabulary, is above ``no_speech_threshold`` (0.6), and the **average log-probability**
of the decoded tokens (end-of-text included, over the tokens greedy decoding may choose, divided by the number of
text tokens plus one) is at most ``logprob_threshold`` (-1.0). :func:`transcribe_with_silence` applies that rule;
a hallucination on non-speech input is then text that survives it. (The log-probabilities are over the tokens
this package's greedy decoding may choose; it also forbids the timestamp tokens, which openai-whisper leaves to
the ``<|notimestamps|>`` prompt, so an average can differ from openai-whisper's by about 0.01.)

**Interventions** are the package's hook-point patches (:func:`asrinterp_utils.hooks.patch` grammar), given to
every call here as ``patches`` and applied to the greedy run, whose steps also give the scores the rule reads:
zeroing heads (``dec.L.self_head_out`` with ``heads=[h]``, as :func:`asrinterp_utils.patching.head_targets` builds
them), or moving the residual stream along a direction (:func:`steer_direction`: add, clamp, project out).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import run, stats, store
from .cache import cache_activations
from .hooks import Intervention, add as add_intervention, apply, hf_model, parse_hook_point
from .patching import stacked_interventions
from .metrics import clip_wers, normalize_text, word_error_rate
from .repetition import is_hallucinated_loop
from .runtime import check_whole

__all__ = ["NO_SPEECH_THRESHOLD", "LOGPROB_THRESHOLD", "Direction", "decoder_states", "loop_outputs",
           "mean_difference", "no_speech_logodds", "no_speech_token", "prompt_ids", "rule_sweep",
           "said_something", "silence_rule", "SpeechCost", "speech_cost", "steer_direction",
           "transcribe_with_silence"]

NO_SPEECH_THRESHOLD = 0.6
"""openai-whisper's ``transcribe`` default: text is dropped only where the no-speech probability is above this..."""

LOGPROB_THRESHOLD = -1.0
"""...and the average log-probability of the decoded tokens is at most this (openai-whisper's default)."""

_UNEMBED_CHUNK = 1024  # rows unembedded at once: (1024, vocab) float32 logits, about 200 MB


# ---------------------------------------------------------------------------------------------------------------
# The no-speech probability and the rule
# ---------------------------------------------------------------------------------------------------------------

def no_speech_token(lm: Any) -> int:
    """The id of the no-speech token: ``<|nocaptions|>`` in the vocabularies of tiny.en to large-v2,
    ``<|nospeech|>`` in large-v3's."""
    tokenizer = getattr(lm, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("no_speech_token: this model has no tokenizer to look <|nocaptions|> up in; pass the token "
                         "id yourself (no_speech_logodds(lm, token=...))")
    unknown = tokenizer.unk_token_id
    for name in ("<|nospeech|>", "<|nocaptions|>"):
        token = tokenizer.convert_tokens_to_ids(name)
        if token is not None and token != unknown:
            return int(token)
    raise ValueError(f"no_speech_token: {getattr(lm, 'name', 'this model')}'s vocabulary has neither <|nospeech|> nor "
                     "<|nocaptions|>")


def prompt_ids(lm: Any, n_rows: int) -> torch.Tensor:
    """The decoding prompt (``<|startoftranscript|>`` first) for ``n_rows`` rows, ``LongTensor (n_rows,
    len(prompt))``: the input of a teacher-forced pass that reads the no-speech probability only."""
    return torch.tensor([list(lm.prompt_ids())] * int(n_rows), dtype=torch.long)


def no_speech_logodds(lm: Any, *, token: int | None = None):
    """A metric for :func:`asrinterp_utils.patching.run_sweep`: the log-odds ``log p / (1 - p)`` of the no-speech
    token at position 0 (the ``<|startoftranscript|>`` position), ``(logits (N, tokens, vocab), ids) -> (N,)``.
    Higher means closer to silence; log-odds rather than the probability, so that a change is comparable at any
    baseline."""
    token = no_speech_token(lm) if token is None else int(token)

    def metric(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logp = logits[:, 0].float().log_softmax(-1)[:, token]
        return logp - torch.log1p(-logp.exp().clamp(max=1 - 1e-7))

    return metric


def _check_thresholds(no_speech_threshold: float, logprob_threshold: float, caller: str) -> None:
    if not 0.0 <= float(no_speech_threshold) <= 1.0:
        raise ValueError(f"{caller}: no_speech_threshold is a probability, between 0 and 1 (openai-whisper's "
                         f"default {NO_SPEECH_THRESHOLD}); got {no_speech_threshold}")
    if float(logprob_threshold) > 0.0:
        raise ValueError(f"{caller}: logprob_threshold is an average log-probability, at most 0 (openai-whisper's "
                         f"default {LOGPROB_THRESHOLD}); got {logprob_threshold}")


def silence_rule(no_speech_prob: Any, avg_logprob: Any, *, no_speech_threshold: float = NO_SPEECH_THRESHOLD,
                 logprob_threshold: float = LOGPROB_THRESHOLD) -> np.ndarray:
    """openai-whisper's decision, ``(n,)`` booleans: True where the text is dropped (``no_speech_prob >
    no_speech_threshold`` and not ``avg_logprob > logprob_threshold``)."""
    _check_thresholds(no_speech_threshold, logprob_threshold, "silence_rule")
    p = np.asarray(no_speech_prob, dtype=np.float64)
    lp = np.asarray(avg_logprob, dtype=np.float64)
    if p.shape != lp.shape:
        raise ValueError(f"silence_rule: {p.size} no-speech probabilities but {lp.size} average log-probabilities")
    return (p > no_speech_threshold) & ~(lp > logprob_threshold)


def transcribe_with_silence(lm: Any, clips: Sequence[np.ndarray] | None = None, *,
                            patches: Mapping[str, Any] | None = None, max_new_tokens: int = 96,
                            no_speech_threshold: float = NO_SPEECH_THRESHOLD,
                            logprob_threshold: float = LOGPROB_THRESHOLD, batch_size: int = run.GREEDY_BATCH,
                            states: torch.Tensor | None = None, token: int | None = None) -> pd.DataFrame:
    """Greedy transcripts (:func:`asrinterp_utils.run.greedy`) with Whisper's no-speech rule applied, under
    ``patches`` (none: the model as it is).

    Args:
        clips: 1-D float32 arrays at 16 kHz; their encoder outputs come from the :mod:`~asrinterp_utils.store`
            (computed and filed where no run has yet). Or give ``states``.
        patches: interventions (hook-point name -> intervention). Decoder points apply to the greedy run (whose
            steps give the scores too); encoder points need ``clips`` (the encoder then runs under them, and nothing
            is read from or filed in the store).
        states: the clips' encoder output ``(batch, frames, d_model)`` instead of ``clips``.
        token: the no-speech token's id (default :func:`no_speech_token`).

    Returns:
        one row per clip: ``transcript`` (greedy, before the rule), ``n_tokens``, ``hit_limit``,
        ``no_speech_prob``, ``avg_logprob``, ``silent`` (:func:`silence_rule`) and ``output`` (the transcript, or
        ``""`` where the rule drops it).
    """
    if (clips is None) == (states is None):
        raise ValueError("transcribe_with_silence: give clips (arrays at 16 kHz) or states (their encoder output), "
                         "not both and not neither")
    _check_thresholds(no_speech_threshold, logprob_threshold, "transcribe_with_silence")
    token = no_speech_token(lm) if token is None else int(token)
    sides = {name: parse_hook_point(lm, name).side for name in (patches or {})}
    encoder_patches = {k: v for k, v in (patches or {}).items() if sides[k] == "enc"}
    decoder_patches = {k: v for k, v in (patches or {}).items() if sides[k] == "dec"}
    if encoder_patches and states is not None:
        raise ValueError(f"transcribe_with_silence: {sorted(encoder_patches)} patch the encoder, which states (an "
                         "encoder output already computed) skip: give the clips instead")
    n = len(states) if states is not None else len(clips)
    rows: list[dict] = []
    for start in range(0, n, batch_size):
        if states is not None:
            block = states[start:start + batch_size]
        elif encoder_patches:
            block = run.encode(lm, clips[start:start + batch_size], patches=encoder_patches).states
        else:
            block = store.encoded(lm, clips[start:start + batch_size]).states
        rows += _decode_and_score(lm, block, None, decoder_patches, max_new_tokens, token)
    return _outcome_table(rows, no_speech_threshold, logprob_threshold)


def _decode_and_score(lm: Any, states: torch.Tensor, kv_rows: torch.Tensor | None, patches: Mapping[str, Any],
                      max_new_tokens: int, token: int) -> list[dict]:
    """Greedy transcripts of one batch under ``patches``, with the no-speech probability (position 0) and the
    log-probabilities of the chosen tokens read from the same steps (``run.greedy(..., scores=True)``). One dict
    per decoder row."""
    decoded = run.greedy(lm, states, max_new_tokens=max_new_tokens, kv_rows=kv_rows, patches=patches, scores=True)
    proj_out = hf_model(lm).proj_out
    param = next(proj_out.parameters())
    first = torch.cat([proj_out(decoded.first_hidden[s:s + _UNEMBED_CHUNK].to(param.device, param.dtype))
                       .float().log_softmax(-1)[:, token].cpu()
                       for s in range(0, len(decoded.first_hidden), _UNEMBED_CHUNK)])
    texts = decoded.texts(lm.tokenizer)
    return [{"transcript": texts[r], "n_tokens": len(ids), "hit_limit": bool(hit),
             "no_speech_prob": float(first[r].exp()), "avg_logprob": float(np.sum(lps)) / (len(ids) + 1)}
            for r, (ids, hit, lps) in enumerate(zip(decoded.text_ids, decoded.hit_limit, decoded.token_logprobs))]


def _outcome_table(rows: list[dict], no_speech_threshold: float, logprob_threshold: float) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=["transcript", "n_tokens", "hit_limit", "no_speech_prob", "avg_logprob"])
    table["silent"] = silence_rule(table.no_speech_prob, table.avg_logprob, no_speech_threshold=no_speech_threshold,
                                   logprob_threshold=logprob_threshold)
    table["output"] = np.where(table.silent, "", table.transcript)
    return table


@torch.no_grad()
def rule_sweep(lm: Any, states: torch.Tensor, targets: Sequence[Any], *, max_new_tokens: int = 96,
               max_rows: int = run.SWEEP_ROWS, no_speech_threshold: float = NO_SPEECH_THRESHOLD,
               logprob_threshold: float = LOGPROB_THRESHOLD, token: int | None = None) -> dict[str, pd.DataFrame]:
    """:func:`transcribe_with_silence` of the same clips under each of several decoder interventions, ``{label:
    outcome table}``.

    ``targets``: :class:`~asrinterp_utils.patching.PatchTarget` (``label``, ``interventions``; e.g. from
    :func:`~asrinterp_utils.patching.head_targets`), decoder points only. ``states``: the clips' encoder output
    ``(clips, frames, d_model)``. Targets run stacked, as many per batch as fit in ``max_rows`` decoder rows
    (each target's interventions restricted to its own rows), all reading one projection of ``states``; the
    tables are those each target gives alone (a test asserts it)."""
    _check_thresholds(no_speech_threshold, logprob_threshold, "rule_sweep")
    max_rows = check_whole(max_rows, "rule_sweep: max_rows", 1, " (decoder rows per forward)")
    token = no_speech_token(lm) if token is None else int(token)
    n = len(states)
    labels = [t.label for t in targets]
    if len(set(labels)) != len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"rule_sweep: the targets' labels name the results, so each must be unique; {twice} repeat")
    for target in targets:
        for name in target.interventions:
            if parse_hook_point(lm, name).side != "dec":
                raise ValueError(f"rule_sweep: {target.label} patches {name}, an encoder point; the sweep reuses one "
                                 "encoder output: patch the encoder with transcribe_with_silence(lm, clips, "
                                 "patches=...)")
    per_batch = max(1, max_rows // max(1, n))
    chunks = [list(targets[start:start + per_batch]) for start in range(0, len(targets), per_batch)]
    plans = [stacked_interventions(chunk, n) for chunk in chunks]  # every target checked before any decoding
    out: dict[str, pd.DataFrame] = {}
    for chunk, plan in zip(chunks, plans):
        kv_rows = torch.arange(len(chunk) * n) % n
        scored = _decode_and_score(lm, states, kv_rows, plan, max_new_tokens, token)
        for k, target in enumerate(chunk):
            out[target.label] = _outcome_table(scored[k * n:(k + 1) * n], no_speech_threshold, logprob_threshold)
    return out


def said_something(outcome: pd.DataFrame) -> np.ndarray:
    """``(n,)`` booleans: the output (after the rule) has a word in it once normalised (punctuation alone is
    nothing). On clips with no speech, each True is a hallucination."""
    return np.array([bool(normalize_text(t)) for t in outcome["output"]], dtype=bool)


def loop_outputs(outcome: pd.DataFrame, references: Sequence[str], repeats_in_audio: Sequence[int]) -> np.ndarray:
    """``(n,)`` booleans: the output (after the rule) is a hallucinated loop
    (:func:`~asrinterp_utils.repetition.is_hallucinated_loop`, against each input's reference text and the number
    of times its audio repeats itself), as chapter 8 counts them; a dropped output is none."""
    references, repeats_in_audio = list(references), list(repeats_in_audio)
    if not len(references) == len(repeats_in_audio) == len(outcome):
        raise ValueError(f"loop_outputs: {len(outcome)} outputs, {len(references)} reference texts and "
                         f"{len(repeats_in_audio)} repeat counts; give one of each per input")
    return np.array([bool(text) and is_hallucinated_loop(text, ref, hit_limit=bool(hit), repeats_in_audio=int(n))
                     for text, hit, ref, n in zip(outcome["output"], outcome["hit_limit"], references,
                                                  repeats_in_audio)], dtype=bool)


@dataclass(frozen=True)
class SpeechCost:
    """What an intervention costs on speech: the corpus ``wer`` of the outputs (dropped clips count as deleted
    words), each clip's WER ``clip_wer (n,)`` for paired comparisons, and the share of clips whose text the rule
    dropped (``dropped``, with its Wilson interval)."""

    wer: float
    clip_wer: np.ndarray
    dropped: stats.Estimate


def speech_cost(outcome: pd.DataFrame, references: Sequence[str]) -> SpeechCost:
    """:class:`SpeechCost` of ``outcome`` (:func:`transcribe_with_silence` on speech) against the reference texts."""
    references = list(references)
    if len(references) != len(outcome):
        raise ValueError(f"speech_cost: {len(outcome)} outputs but {len(references)} reference texts")
    outputs = list(outcome["output"])
    clip = np.array(clip_wers(references, outputs))
    return SpeechCost(word_error_rate(references, outputs), clip,
                      stats.proportion(int(np.asarray(outcome["silent"]).sum()), len(outcome)))


# ---------------------------------------------------------------------------------------------------------------
# Directions in the residual stream
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def decoder_states(lm: Any, states: torch.Tensor, point: str = "dec.*.resid_post", *,
                   position: int = 0) -> torch.Tensor:
    """A decoder point's activation at one prompt position (default 0, ``<|startoftranscript|>``, where the
    no-speech probability is read), teacher-forced on the prompt only: ``(layers, batch, d_model)`` for the points
    ``point`` matches, in layer order. ``states``: the clips' encoder output ``(batch, frames, d_model)``."""
    n_prompt = len(lm.prompt_ids())
    if not 0 <= position < n_prompt:
        raise ValueError(f"decoder_states: position must be a prompt position, 0..{n_prompt - 1}; got {position}")
    with cache_activations(lm, point) as cache:
        run.teacher_force(lm, states, prompt_ids(lm, len(states)), logits=False)
    names = list(cache)
    if any(parse_hook_point(lm, name).side != "dec" for name in names):
        raise ValueError(f"decoder_states: {point!r} must name decoder points (dec.L.resid_post, ...)")
    return torch.stack([cache[name][:, position] for name in names])


@dataclass(frozen=True)
class Direction:
    """A direction in a ``d_model`` space: ``unit (d_model,)``, and where the two classes it was found from sit
    along it (``positive_mean``, ``negative_mean``: mean projections; ``gap`` their difference, the natural unit
    of a steering strength)."""

    unit: torch.Tensor
    positive_mean: float
    negative_mean: float

    @property
    def gap(self) -> float:
        return self.positive_mean - self.negative_mean


def mean_difference(positive: Any, negative: Any) -> Direction:
    """The difference of the class means, ``mean(positive) - mean(negative)``, as a :class:`Direction`: the
    simplest linear probe, and the usual steering vector (a logistic probe's weights also follow the directions
    along which the classes vary least, which steer poorly). ``positive (n, d)``, ``negative (m, d)``."""
    pos = torch.as_tensor(positive, dtype=torch.float32)
    neg = torch.as_tensor(negative, dtype=torch.float32)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1] or not len(pos) or not len(neg):
        raise ValueError(f"mean_difference: positive and negative must be non-empty (rows, d) with the same d; got "
                         f"{tuple(pos.shape)} and {tuple(neg.shape)}")
    diff = pos.mean(0) - neg.mean(0)
    norm = float(diff.norm())
    if norm == 0.0:
        raise ValueError("mean_difference: the two classes have the same mean; there is no direction between them")
    unit = diff / norm
    return Direction(unit, float((pos @ unit).mean()), float((neg @ unit).mean()))


def steer_direction(direction: Any, *, add: float | None = None, clamp: float | None = None,
                    project_out: bool = False, positions: Any = None, rows: Any = None) -> Intervention:
    """An intervention that moves a point along ``direction (d_model,)`` (normalised here to unit length ``u``).

    Exactly one of: ``add=a``: ``x + a u`` (``a = 0`` changes nothing); ``clamp=c``: set the projection to ``c``,
    ``x + (c - x.u) u``; ``project_out=True``: remove the component along ``u``, ``x - (x.u) u`` (the same as
    ``clamp=0``). ``positions``/``rows`` restrict it as for any intervention."""
    if sum([add is not None, clamp is not None, bool(project_out)]) != 1:
        raise ValueError("steer_direction: give exactly one of add=, clamp= or project_out=True")
    u = torch.as_tensor(direction, dtype=torch.float32).detach()
    if u.ndim != 1 or not torch.isfinite(u).all() or float(u.norm()) == 0.0:
        raise ValueError(f"steer_direction: direction must be a finite, non-zero vector (d_model,); got shape "
                         f"{tuple(u.shape)}")
    u = u / u.norm()
    if add is not None:
        return add_intervention(float(add) * u, positions=positions, rows=rows)
    target = 0.0 if project_out else float(clamp)

    def fn(act: torch.Tensor, ctx: Any) -> torch.Tensor:
        if act.shape[-1] != len(u):
            raise ValueError(f"steer_direction: the direction is {len(u)}-dimensional, {ctx.point.name} is "
                             f"{act.shape[-1]}-dimensional")
        step = u.to(act.device, act.dtype)
        return act + (target - act @ step)[..., None] * step

    return apply(fn, positions=positions, rows=rows)
