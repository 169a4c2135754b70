"""Self-checks for the book's exercises.

Each exercise in a chapter ends with a call such as ``exercises.check_real_frames(answer, seconds=3.7)``. The check
computes the right answer itself, with the package, and compares:

* a right answer returns a :class:`CheckResult` that shows "Correct" (and why it is right);
* an answer left as ``...`` (the student version's stub) returns one that says "not answered yet", so a notebook
  still runs top to bottom;
* a wrong answer raises :class:`WrongAnswer`, an ``AssertionError`` whose message says what is wrong.

In the book the solutions run through the same checks, so a build fails if a solution and its check disagree.
``make student`` writes the chapters with the solutions removed (``scripts/notebooks.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch


class WrongAnswer(AssertionError):
    """The answer was given and is wrong; the message says how."""


@dataclass
class CheckResult:
    """``ok``: True (right) or None (not answered yet); ``message``: what the check found."""

    exercise: str
    ok: bool | None
    message: str

    def __bool__(self) -> bool:
        return bool(self.ok)

    def __str__(self) -> str:
        mark = "Correct" if self.ok else "Not answered yet"
        return f"{self.exercise}: {mark}. {self.message}"

    def _repr_markdown_(self) -> str:
        mark = "✓ **Correct.**" if self.ok else "**Not answered yet.**"  # ✓ is in common fonts; emoji are not
        return f"*{self.exercise}*: {mark} {self.message}"

    __repr__ = __str__


def _unanswered(answer: Any) -> bool:
    return answer is ... or answer is None


def _verdict(exercise: str, answer: Any, right: bool, why: str, wrong: str) -> CheckResult:
    if _unanswered(answer):
        return CheckResult(exercise, None, "Replace the `...` with your answer and run the check again.")
    if not right:
        raise WrongAnswer(f"{exercise}: {wrong}")
    return CheckResult(exercise, True, why)


def _patch_change(lm: Any, features: torch.Tensor, decoder_input_ids: torch.Tensor, source_cache: Any, point: str,
                  metric: Any) -> float:
    """Mean over clips of ``metric`` patched minus clean, hook point ``point`` taking its value from ``source_cache``,
    computed by :func:`~asrinterp_utils.patching.run_sweep` (a different code path from a hand-written patch).
    ``features``: the clips' log-mel features, or their :class:`~asrinterp_utils.run.Encoded` run (then the
    encoder does not run again)."""
    from .patching import component_targets, run_sweep

    sweep = run_sweep(lm, features, decoder_input_ids, component_targets(lm, point, source=source_cache), metric)
    return float((sweep.values[0] - sweep.baseline).mean())


# ---------------------------------------------------------------------------------------------------------------
# Chapter 1: Whisper from the inside
# ---------------------------------------------------------------------------------------------------------------

def check_cross_attention_points(answer: Sequence[str] | Any, lm: Any) -> CheckResult:
    """Exercise 1.1: the names of every decoder layer's cross-attention output hook point, in layer order."""
    from .hooks import resolve_hook_points

    truth = [p.name for p in resolve_hook_points(lm, "dec.*.cross_attn_out")]
    given = None if _unanswered(answer) else [str(a) for a in answer]
    wrong = f"expected {len(truth)} names, one per decoder layer, like {truth[0]!r}; got {given!r}"
    if given is not None and sorted(given) == sorted(truth) and given != truth:
        wrong = "the right names, but not in layer order"
    return _verdict("Exercise 1.1", answer, given == truth,
                    f"{len(truth)} decoder layers, one cross-attention output each: `dec.*.cross_attn_out` "
                    "selects the same list.", wrong)


def check_real_frames(answer: int | Any, seconds: float) -> CheckResult:
    """Exercise 1.2: how many of the 1,500 encoder frames hold a clip of ``seconds`` seconds."""
    from .audio import SAMPLE_RATE, n_encoder_frames

    truth = n_encoder_frames(round(seconds * SAMPLE_RATE))
    return _verdict("Exercise 1.2", answer, not _unanswered(answer) and int(answer) == truth,
                    f"{seconds} s is {round(seconds * SAMPLE_RATE)} samples; at 320 samples (20 ms) per encoder frame "
                    f"that is {truth} frames, rounded up; the other {1500 - truth} encode padding.",
                    f"got {answer}; count samples (16,000 per second), then frames of 320 samples, rounding up")


# ---------------------------------------------------------------------------------------------------------------
# Chapter 3: the logit lens
# ---------------------------------------------------------------------------------------------------------------

def check_saturation_layers(answer: Sequence[int] | Any, lm: Any, features: torch.Tensor,
                            decoder_input_ids: torch.Tensor, positions: Sequence[int]) -> CheckResult:
    """Exercise 3.1: the saturation layer (0 = embeddings ... n = output) of the prediction at each of
    ``positions`` of one teacher-forced clip (``features`` ``(1, mels, 3000)``, ``decoder_input_ids`` ``(1, T)``)."""
    from .lens import logit_lens

    with torch.no_grad():
        result = logit_lens(lm.model, features, decoder_input_ids)
    truth = [int(x) for x in result.saturation_layer()[0, list(positions)]]
    given = None if _unanswered(answer) else [int(a) for a in answer]
    return _verdict("Exercise 3.1", answer, given == truth,
                    f"saturation layers {truth} (of {result.n_layers - 1}): the first lens layer from which the "
                    "lens's top-1 stays equal to the model's final top-1.",
                    f"got {given}; for each position take the first layer from which `agrees` is true at that layer "
                    "and every later one (not the first layer where it is true)")


def check_lens_equals_logits(answer: float | Any) -> CheckResult:
    """Exercise 3.2: the largest absolute difference between the last lens layer's log-probabilities and the
    model's own (a known answer: zero, up to float rounding)."""
    ok = not _unanswered(answer) and abs(float(answer)) < 1e-4
    return _verdict("Exercise 3.2", answer, ok,
                    f"{float(answer) if not _unanswered(answer) else 0:.1e}: at the last layer the lens *is* the "
                    "model's unembedding of its final LayerNorm, so the two agree to float rounding.",
                    f"got {answer}; the last lens layer must reproduce the logits: check that you apply the "
                    "decoder's final LayerNorm and the tied token embeddings, at the same positions")


# ---------------------------------------------------------------------------------------------------------------
# Chapter 7: activation patching
# ---------------------------------------------------------------------------------------------------------------


def check_single_patch(answer: float | Any, lm: Any, features: torch.Tensor, decoder_input_ids: torch.Tensor,
                       reference_cache: Any, point: str, start: int) -> CheckResult:
    """Exercise 7.1: the change in the mean log-probability of the tokens from position ``start`` on (patched minus
    clean, averaged over clips) when hook point ``point`` takes its value from ``reference_cache``. Checked against
    :func:`~asrinterp_utils.patching.run_sweep`, a different code path from the one-patch forward the exercise asks
    for."""
    from .patching import token_logprob

    metric = token_logprob(start, end_of_text=lm.end_of_text)
    truth = _patch_change(lm, features, decoder_input_ids, reference_cache, point, metric)
    ok = not _unanswered(answer) and abs(float(answer) - truth) < 1e-3 * max(1.0, abs(truth))
    return _verdict("Exercise 7.1", answer, ok,
                    f"patching `{point}` from the reference changes the mean log-probability by {truth:+.3f} nats.",
                    f"got {answer}, expected {truth:+.4f}; patch only `{point}`, score the same tokens, and subtract "
                    "the clean run's metric (patched minus clean)")


def check_most_damaging_head(answer: str | Any, lm: Any, features: torch.Tensor, decoder_input_ids: torch.Tensor,
                             reference_cache: Any, start: int) -> CheckResult:
    """Exercise 7.2: the cross-attention head whose output, patched from the reference run, lowers the mean
    log-probability of the tokens from position ``start`` on the most. ``answer`` is its label, e.g.
    ``"dec.1.cross_head_out[h3]"``."""
    from .patching import head_targets, run_sweep, token_logprob

    targets = head_targets(lm, "cross_head_out", source=reference_cache)
    sweep = run_sweep(lm, features, decoder_input_ids, targets, token_logprob(start, end_of_text=lm.end_of_text))
    change = (sweep.values - sweep.baseline).mean(dim=1)
    best = sweep.labels[int(change.argmin())]
    given = None if _unanswered(answer) else str(answer)
    return _verdict("Exercise 7.2", answer, given == best,
                    f"`{best}` lowers the mean log-probability by {float(change.min()):.3f} nats.",
                    f"got {given!r}; the most damaging head is the one with the most negative change "
                    "(patched minus baseline), averaged over clips")


# ---------------------------------------------------------------------------------------------------------------
# Chapter 4: the encoder lens
# ---------------------------------------------------------------------------------------------------------------

def check_encoder_layer_transcript(answer: str | Any, lm: Any, wave: Any, layer: int, max_new_tokens: int = 64
                                   ) -> CheckResult:
    """Exercise 4.1: the greedy transcript of ``wave`` decoded from encoder layer ``layer``'s output, after the
    encoder's final LayerNorm. Checked against :func:`~asrinterp_utils.lens.encoder_lens`."""
    from .lens import encoder_lens

    table = encoder_lens(lm, [wave], layers=[layer], max_new_tokens=max_new_tokens, progress=False)
    truth = str(table.transcript.iloc[0]).strip()
    given = None if _unanswered(answer) else str(answer).strip()
    return _verdict("Exercise 4.1", answer, given == truth,
                    f"from layer {layer} the decoder writes {truth!r}.",
                    f"got {given!r}, expected {truth!r}; decode layer {layer}'s `resid_post` after "
                    "`encoder.layer_norm`, greedily, with the same token limit")


def check_layer_similarity(answer: Sequence[float] | Any, lm: Any, wave: Any) -> CheckResult:
    """Exercise 4.2: for each encoder layer ``L``, the cosine similarity between ``encoder.layer_norm`` of
    ``enc.{L}.resid_post`` and the encoder's output, per frame, averaged over the clip's real frames (``wave``
    ``(n_samples,)`` at 16 kHz). One value per layer; the last is 1."""
    from .audio import n_encoder_frames
    from .cache import cache_activations
    from .hooks import whisper_core

    encoder = whisper_core(lm).encoder
    feats, _ = lm.features([wave])
    with torch.no_grad(), cache_activations(lm, "enc.*.resid_post") as cache:
        output = encoder(feats).last_hidden_state[0]  # (frames, d_model)
    n = n_encoder_frames(len(wave))
    truth = []
    with torch.no_grad():
        for layer in range(lm.dims.n_encoder_layers):
            lensed = encoder.layer_norm(cache[f"enc.{layer}.resid_post"][0])
            truth.append(float(torch.nn.functional.cosine_similarity(lensed[:n], output[:n], dim=-1).mean()))
    given = None if _unanswered(answer) else [float(a) for a in answer]
    ok = given is not None and len(given) == len(truth) and all(abs(g - t) < 1e-3 for g, t in zip(given, truth))
    shown = ", ".join(f"{t:.3f}" for t in truth)
    return _verdict("Exercise 4.2", answer, ok,
                    f"similarity to the output by layer: {shown}. Compare it with the WER curve: how close must a "
                    "layer be before the decoder can read it?",
                    f"got {given}, expected [{shown}]; apply `encoder.layer_norm` to every layer, compare each frame "
                    f"with the same frame of the output, and average over the first {n} (real) frames only")


# ---------------------------------------------------------------------------------------------------------------
# Chapter 8: repetition hallucinations
# ---------------------------------------------------------------------------------------------------------------

def check_compression_ratio(answer: float | Any, text: str) -> CheckResult:
    """Exercise 8.1: Whisper's compression ratio of ``text`` (UTF-8 bytes over zlib-compressed bytes)."""
    from .metrics import COMPRESSION_RATIO_THRESHOLD, compression_ratio

    truth = compression_ratio(text)
    ok = not _unanswered(answer) and abs(float(answer) - truth) < 1e-6
    flag = "above" if truth > COMPRESSION_RATIO_THRESHOLD else "not above"
    return _verdict("Exercise 8.1", answer, ok,
                    f"{truth:.2f}, {flag} Whisper's threshold of {COMPRESSION_RATIO_THRESHOLD}.",
                    f"got {answer}, expected {truth:.4f}; divide the length of `text.encode('utf-8')` by the length "
                    "of its `zlib.compress`")


def check_longest_repeat(answer: tuple[Sequence[str] | str, int] | Any, text: str, max_n: int = 8) -> CheckResult:
    """Exercise 8.2: ``answer = (ngram, repeats)``: an n-gram of at most ``max_n`` words (a tuple of words or one
    string) that ``text`` repeats back to back ``repeats`` times, on :func:`~asrinterp_utils.metrics.normalize_text`
    words, with ``repeats`` the largest such count. Ties between n-grams are all right."""
    from .metrics import longest_repeat, normalize_text

    words = normalize_text(text).split()
    truth = longest_repeat(words, max_n)
    if _unanswered(answer):
        return _verdict("Exercise 8.2", answer, False, "", "")
    try:
        ngram, repeats = answer
    except (TypeError, ValueError):
        raise WrongAnswer("Exercise 8.2: give a pair (ngram, repeats), e.g. (('to', 'the', 'night'), 3)") from None
    gram = tuple(normalize_text(ngram).split()) if isinstance(ngram, str) else tuple(str(w) for w in ngram)
    n = len(gram)
    found = n > 0 and any(words[i:i + n * int(repeats)] == list(gram) * int(repeats)
                          for i in range(len(words) - n * int(repeats) + 1))
    ok = 0 < n <= max_n and int(repeats) == truth.repeats and found
    return _verdict("Exercise 8.2", answer, ok,
                    f"“{' '.join(truth.ngram)}” {truth.repeats} times in a row (from word {truth.start}); "
                    "`metrics.is_repetitive` calls four or more a loop.",
                    f"got {' '.join(gram)!r} x {repeats}; the most back-to-back repeats of an n-gram of up to {max_n} "
                    f"words is {truth.repeats} (e.g. {' '.join(truth.ngram)!r})"
                    + ("" if found or not n else "; your n-gram does not occur that many times in a row"))


# ---------------------------------------------------------------------------------------------------------------
# Chapter 9: semantic bias
# ---------------------------------------------------------------------------------------------------------------

def check_logit_difference(answer: float | Any, lm: Any, features: torch.Tensor, decoder_input_ids: torch.Tensor,
                           position: int, spoken: int, expected: int) -> CheckResult:
    """Exercise 9.1: the teacher-forced logit of token ``spoken`` minus that of ``expected`` at ``position`` of one
    clip (``features`` ``(1, mels, 3000)``, ``decoder_input_ids`` ``(1, T)``)."""
    from .patching import logit_diff

    with torch.no_grad():
        logits = lm.model(features, decoder_input_ids=decoder_input_ids).logits
    truth = float(logit_diff(position, spoken, expected)(logits, decoder_input_ids)[0])
    ok = not _unanswered(answer) and abs(float(answer) - truth) < 1e-3
    return _verdict("Exercise 9.1", answer, ok,
                    f"{truth:+.2f}: the model {'favours the spoken word' if truth > 0 else 'favours the expected word'}"
                    " at that position.",
                    f"got {answer}, expected {truth:+.3f}; read the logits at the position that *predicts* the word "
                    "(one before it), and subtract the expected word's first token from the spoken word's")


def check_noise_patch(answer: float | Any, lm: Any, features: torch.Tensor, decoder_input_ids: torch.Tensor,
                      noise_wave: Any, point: str, position: int, spoken: int, expected: int) -> CheckResult:
    """Exercise 9.2: the change in one clip's logit difference (as in 9.1; patched minus clean) when the encoder's
    hook point ``point`` takes its value from a run on ``noise_wave`` ``(n_samples,)``."""
    from .cache import cache_activations
    from .hooks import whisper_core
    from .patching import logit_diff

    noise_feats, _ = lm.features([noise_wave])
    with torch.no_grad(), cache_activations(lm, point) as noise:
        whisper_core(lm).encoder(noise_feats)
    truth = _patch_change(lm, features, decoder_input_ids, noise, point, logit_diff(position, spoken, expected))
    ok = not _unanswered(answer) and abs(float(answer) - truth) < 1e-3 * max(1.0, abs(truth))
    return _verdict("Exercise 9.2", answer, ok,
                    f"{truth:+.2f}: the noise patch {'raises' if truth > 0 else 'lowers'} the logit difference "
                    f"(towards the {'spoken' if truth > 0 else 'expected'} word, or away from the spoken one).",
                    f"got {answer}, expected {truth:+.3f}; cache `{point}` on the noise clip's features, replace it "
                    "in the clean run, and subtract the clean logit difference from the patched one")


# ---------------------------------------------------------------------------------------------------------------
# Chapter 2: the data
# ---------------------------------------------------------------------------------------------------------------

def check_snr_mix(answer: Any, speech: Any, snr_db: float) -> CheckResult:
    """Exercise 2.1: ``answer`` is ``speech`` plus noise at ``snr_db`` dB: the power of ``speech`` over the power of
    what was added (``answer - speech``), in decibels."""
    import numpy as np

    if _unanswered(answer):
        return _verdict("Exercise 2.1", answer, False, "", "")
    mixture, clean = np.asarray(answer, dtype=np.float64), np.asarray(speech, dtype=np.float64)
    if mixture.shape != clean.shape:
        raise WrongAnswer(f"Exercise 2.1: the mixture has shape {mixture.shape}, the speech {clean.shape}")
    added = mixture - clean
    if not np.any(added):
        raise WrongAnswer("Exercise 2.1: nothing was added to the speech")
    snr = 10 * np.log10(np.mean(clean ** 2) / np.mean(added ** 2))
    return _verdict("Exercise 2.1", answer, abs(snr - snr_db) < 0.05,
                    f"the added noise is {snr:.2f} dB below the speech.",
                    f"the added noise is {snr:.2f} dB below the speech, not {snr_db}; scale the noise by "
                    f"rms(speech) / rms(noise) / 10 ** ({snr_db} / 20)")


def check_speaker_split(answer: Sequence[str] | Any, table: Any, label: str, *, speaker: str = "speaker",
                        test_share: tuple[float, float] = (0.2, 0.5)) -> CheckResult:
    """Exercise 2.2: ``answer`` names the test speakers of ``table`` (one row per clip). Right when the test set
    holds a share of the clips within ``test_share`` and every value of ``label`` is on both sides (so a probe can
    be trained and tested on each class). Speaker-disjoint by construction: a speaker is on one side only."""
    if _unanswered(answer):
        return _verdict("Exercise 2.2", answer, False, "", "")
    chosen = {str(a) for a in ([answer] if isinstance(answer, str) else answer)}
    speakers = set(table[speaker].astype(str))
    unknown = sorted(chosen - speakers)
    if unknown:
        raise WrongAnswer(f"Exercise 2.2: not speakers of this table: {unknown[:5]}")
    test = table[speaker].astype(str).isin(chosen)
    share = float(test.mean())
    missing = [f"{value!r} has no {side} speaker" for value in sorted(table[label].unique())
               for side, rows in (("test", test), ("training", ~test)) if not (table[label][rows] == value).any()]
    low, high = test_share
    problems = missing + ([] if low <= share <= high else [f"the test set holds {share:.0%} of the clips, not "
                                                           f"{low:.0%} to {high:.0%}"])
    return _verdict("Exercise 2.2", answer, not problems,
                    f"{len(chosen)} of {len(speakers)} speakers, {int(test.sum())} clips ({share:.0%}) in the test set, "
                    f"every {label} on both sides. A split of clips at random would put each voice on both sides, "
                    "and a probe could score by recognising the voice.",
                    "; ".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# Chapter 5: probing the encoder
# ---------------------------------------------------------------------------------------------------------------

def check_probe_accuracy(answer: float | Any, features: Any, labels: Any, groups: Any, *, n_splits: int = 5,
                         C: float = 1.0) -> CheckResult:
    """Exercise 5.1: the mean accuracy of a standardised, L2-regularised logistic regression (``C``) on
    ``features`` ``(clips, d)``, over ``GroupKFold(n_splits)`` folds that keep each group (speaker) on one side."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    truth = float(cross_val_score(probe, features, labels, groups=groups, cv=GroupKFold(n_splits)).mean())
    ok = not _unanswered(answer) and abs(float(answer) - truth) < 1e-6
    return _verdict("Exercise 5.1", answer, ok,
                    f"mean held-out-speaker accuracy {truth:.3f}; compare it with the chapter's probe at that layer "
                    "(which also tunes C inside each fold) and with its shuffled-label control.",
                    f"got {answer}, expected {truth:.4f}; standardise inside the pipeline (not before the split), "
                    f"C={C}, GroupKFold({n_splits}) with the speakers as groups")


def check_real_frame_mean(answer: Any, lm: Any, wave: Any, point: str) -> CheckResult:
    """Exercise 5.2: the mean of hook point ``point`` (an encoder point, ``(frames, d_model)`` per clip) over the
    real frames of ``wave`` ``(n_samples,)`` only: a ``(d_model,)`` vector. Checked against
    :func:`~asrinterp_utils.extract.pool_batch`, which pools on the fly inside the hook."""
    from .extract import pool_batch

    with torch.no_grad():
        pooled, n_frames = pool_batch(lm, [wave], [point])
    truth = pooled[0, 0].double()
    if _unanswered(answer):
        return _verdict("Exercise 5.2", answer, False, "", "")
    given = torch.as_tensor(answer).double().reshape(-1).cpu()
    if given.shape != truth.shape:
        raise WrongAnswer(f"Exercise 5.2: expected a vector of {truth.numel()} values (d_model), got shape "
                          f"{tuple(torch.as_tensor(answer).shape)}")
    error = float((given - truth).abs().max() / truth.abs().max())
    return _verdict("Exercise 5.2", answer, error < 1e-4,
                    f"the mean over {int(n_frames[0])} real frames (of 1,500), to {error:.0e} relative error.",
                    f"off by up to {error:.1%} of the largest value; average only the first {int(n_frames[0])} "
                    "frames (the clip), not the padding that fills the 30 s window")


# ---------------------------------------------------------------------------------------------------------------
# Chapter 6: predicting hallucinations
# ---------------------------------------------------------------------------------------------------------------

def check_word_error_rate(answer: float | Any, reference: str, hypothesis: str) -> CheckResult:
    """Exercise 6.1: the word error rate of ``hypothesis`` against ``reference``, both normalised with
    :func:`~asrinterp_utils.metrics.normalize_text` (word-level edit distance over the reference's length)."""
    from .metrics import normalize_text, word_error_rate

    truth = word_error_rate(reference, hypothesis)
    ok = not _unanswered(answer) and abs(float(answer) - truth) < 1e-9
    n = len(normalize_text(reference).split())
    return _verdict("Exercise 6.1", answer, ok,
                    f"{truth:.3f}: {round(truth * n)} word edits over {n} reference words.",
                    f"got {answer}, expected {truth:.4f}; count substitutions, deletions and insertions on the "
                    "normalised word lists and divide by the number of reference words")


def check_transcript_logprob(answer: float | Any, lm: Any, features: torch.Tensor, decoder_input_ids: torch.Tensor,
                             start: int) -> CheckResult:
    """Exercise 6.2: the mean log-probability the model gives the teacher-forced tokens ``decoder_input_ids[0,
    start:]`` (one clip; ``features`` ``(1, mels, 3000)``), each predicted from the position before it: Whisper's
    ``avg_logprob``, up to whether the end-of-text token is counted."""
    from .patching import token_logprob

    with torch.no_grad():
        logits = lm.model(features, decoder_input_ids=decoder_input_ids).logits
    truth = float(token_logprob(start)(logits, decoder_input_ids)[0])
    ok = not _unanswered(answer) and abs(float(answer) - truth) < 1e-3
    flag = "below" if truth < -1 else "above"
    return _verdict("Exercise 6.2", answer, ok,
                    f"{truth:.3f} nats per token, {flag} Whisper's fallback threshold of -1.",
                    f"got {answer}, expected {truth:.4f}; take `log_softmax` of the logits at positions start-1 ... "
                    "T-2 (each predicts the next token), read the log-probability of the token that follows, average")


# ---------------------------------------------------------------------------------------------------------------
# Chapter 10: Sparse features
# ---------------------------------------------------------------------------------------------------------------

def check_sae_l0(answer: float | Any, sae: Any, rows: torch.Tensor) -> CheckResult:
    """Exercise 10.1: the mean number of latents of ``sae`` (a :class:`~asrinterp_utils.sae.TopKSAE`) that are
    non-zero per row of ``rows (n, d_in)``: its L0."""
    with torch.no_grad():
        z = sae.encode(rows)
    truth = float((z > 0).sum(-1).float().mean())
    ok = not _unanswered(answer) and abs(float(answer) - truth) < 1e-6
    return _verdict("Exercise 10.1", answer, ok,
                    f"{truth:.2f} of {sae.d_sae} latents per row; at most k = {sae.k}, fewer where some of the k "
                    "largest pre-activations are negative (the ReLU after the TopK zeroes them).",
                    f"got {answer}, expected {truth:.3f}; count the non-zero entries of `sae.encode(rows)` in each row, "
                    "then average over rows")


def check_fraction_of_variance_explained(answer: float | Any, sae: Any, rows: torch.Tensor) -> CheckResult:
    """Exercise 10.2: ``1 - sum ||x - sae(x)||^2 / sum ||x - mean(x)||^2`` over ``rows (n, d_in)``."""
    with torch.no_grad():
        residual = float(((sae(rows) - rows) ** 2).sum())
    total = float(((rows - rows.mean(0)) ** 2).sum())
    truth = 1.0 - residual / total
    ok = not _unanswered(answer) and abs(float(answer) - truth) < 1e-4
    return _verdict("Exercise 10.2", answer, ok,
                    f"{truth:.3f}: the reconstruction keeps that share of the rows' variance around their mean.",
                    f"got {answer}, expected {truth:.4f}; sum the squared reconstruction errors over rows and "
                    "dimensions, divide by the summed squared deviations from the rows' mean, subtract from 1")


# ---------------------------------------------------------------------------------------------------------------
# Chapter 11: Repairing hallucinations
# ---------------------------------------------------------------------------------------------------------------

def check_silence_rule(answer: Any, outcome: Any) -> CheckResult:
    """Exercise 11.1: Whisper's no-speech rule applied to the columns ``no_speech_prob`` and ``avg_logprob`` of
    ``outcome`` (a :func:`~asrinterp_utils.repair.transcribe_with_silence` table): ``(n,)`` booleans, True where the
    text is dropped."""
    from .repair import silence_rule

    truth = silence_rule(outcome["no_speech_prob"], outcome["avg_logprob"])
    given = None if _unanswered(answer) else np.asarray(answer)
    ok = given is not None and given.shape == truth.shape and given.dtype == bool and bool((given == truth).all())
    wrong = (f"expected {len(truth)} booleans, got shape {getattr(given, 'shape', None)} and dtype "
             f"{getattr(given, 'dtype', None)}" if given is None or given.shape != truth.shape or given.dtype != bool
             else f"{int((given != truth).sum())} of {len(truth)} clips differ; drop the text where "
                  "no_speech_prob > 0.6 and avg_logprob is not above -1 (both must hold)")
    return _verdict("Exercise 11.1", answer, ok,
                    f"{int(truth.sum())} of {len(truth)} clips dropped: the model must think the window silent and "
                    "be unsure of its text; a confident 'you' survives.", wrong)


def check_project_out(answer: Any) -> CheckResult:
    """Exercise 11.2: ``answer(x, v)`` removes from activations ``x (..., d)`` their component along ``v (d,)`` (of
    any length): checked against :func:`~asrinterp_utils.repair.steer_direction` with ``project_out=True`` on random
    activations, and for idempotence."""
    from .hooks import HookContext
    from .repair import steer_direction

    if _unanswered(answer):
        return _verdict("Exercise 11.2", answer, False, "", "")
    if not callable(answer):
        raise WrongAnswer(f"Exercise 11.2: answer must be a function project_out(x, v); got {type(answer).__name__}")
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 5, 16, generator=g), 7.0 * torch.randn(16, generator=g)
    truth = steer_direction(v, project_out=True).value(x, HookContext(None, torch.arange(5)))
    got = answer(x.clone(), v.clone())
    ok = isinstance(got, torch.Tensor) and got.shape == x.shape and torch.allclose(got, truth, atol=1e-5)
    twice = ok and torch.allclose(answer(got, v.clone()), got, atol=1e-5)
    return _verdict("Exercise 11.2", answer, bool(ok and twice),
                    "right: x minus (x . u) u with u = v / |v|; a second projection finds nothing left to remove.",
                    "the result differs from x - (x . u) u with u = v / |v| (normalise v first; the projection of "
                    "each row is a number per position: (x @ u)[..., None] * u)" if not ok else
                    "applying it twice changes the result again: the component along v must be gone after once")
