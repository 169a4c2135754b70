"""Repetition hallucinations: make candidate inputs, find the ones on which a model loops, and score what a patch
does to the loops.

A *loop* is a transcript in which the model repeats itself (:func:`asrinterp_utils.metrics.is_repetitive`: one
n-gram four or more times in a row, or a compression ratio above Whisper's 2.4). A loop is a *hallucinated* loop
when the audio does not repeat: either the reference text is not repetitive, or the model runs to the token limit
without ending, repeating past anything the audio holds (:func:`is_hallucinated_loop`). Audio that really repeats
("stutter" below) is transcribed as a repetition by a faithful model; only a runaway counts there.

Finding loops is the hard part on small models: plain noise, silence, truncation and heavy noise mostly make
tiny.en say "you" or a short sentence. :func:`candidate_inputs` therefore tries several transformations of real and
synthetic speech; :func:`mine_loops` decodes them all greedily (no temperature fallback, no timestamps) and keeps
what loops, reporting how many were found of how many tried. Results are cached on disk by model and candidate set.

>>> candidates = candidate_inputs(bank_table, kinds=("speed3x", "stutter"))
>>> mined = mine_loops(lm, candidates)             # one row per candidate, with ``hallucinated_loop``
>>> loops = mined[mined.hallucinated_loop]
"""
from __future__ import annotations

import hashlib
import json
from io import StringIO
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import run, store
from .audio import SAMPLE_RATE
from .metrics import is_repetitive, longest_repeat, normalize_text, word_error_rate
from .runtime import cache_dir, check_whole, write_text_atomic


TRANSFORMS = {
    "speed2x": "played twice as fast (pitch rises with it)",
    "speed2.5x": "played 2.5 times as fast",
    "speed3x": "played three times as fast",
    "speed4x": "played four times as fast",
    "stutter": "the first quarter of the clip, six times over (the audio itself repeats)",
    "reversed": "played backwards",
    "cut+silence": "the first half of the clip, then 20 s of near-silence",
    "slow0.5x": "played at half speed",
    "none": "the clip as it is, for inputs that are hard without a transformation (speech in another language)",
}
"""The transformations :func:`transform` knows, with what each does."""

_SPEEDS = {"speed2x": (1, 2), "speed2.5x": (2, 5), "speed3x": (1, 3), "speed4x": (1, 4), "slow0.5x": (2, 1)}


def transform(wave: np.ndarray, kind: str, *, seed: int = 0) -> np.ndarray:
    """``wave`` (1-D float32 at 16 kHz) transformed as :data:`TRANSFORMS` ``[kind]`` says, at most 30 s.

    Speed changes resample (pitch changes with speed, as when a recording is played fast); ``stutter`` repeats the
    first quarter six times; ``cut+silence`` appends near-silence (Gaussian noise at 1e-3) to the first half.
    """
    from scipy.signal import resample_poly

    x = np.asarray(wave, dtype=np.float32)
    if kind in _SPEEDS:
        up, down = _SPEEDS[kind]
        out = resample_poly(x, up, down)
    elif kind == "stutter":
        out = np.tile(x[: max(1, len(x) // 4)], 6)
    elif kind == "none":
        out = x
    elif kind == "reversed":
        out = x[::-1]
    elif kind == "cut+silence":
        quiet = np.random.default_rng(seed).standard_normal(20 * SAMPLE_RATE) * 1e-3
        out = np.concatenate([x[: max(1, len(x) // 2)], quiet])
    else:
        raise ValueError(f"unknown transformation {kind!r}; known: {', '.join(TRANSFORMS)}")
    return np.ascontiguousarray(out[: 30 * SAMPLE_RATE], dtype=np.float32)


def candidate_inputs(table: pd.DataFrame, kinds: Sequence[str] = ("speed2x", "speed3x", "stutter"), *,
                     n_clips: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Candidate inputs: every clip of ``table`` (a speech-bank table with ``clip_id, path, text``; the first
    ``n_clips`` after a seeded shuffle) under every transformation in ``kinds``.

    Returns one row per candidate: ``candidate_id, kind, source_clip_id, speaker, text`` (the words in the audio:
    the source sentence, or ``""`` where the transformation makes them unreadable, i.e. ``reversed``),
    ``repeats_in_audio`` (6 for ``stutter``, else 1), ``duration_s`` and ``audio`` (the float32 array).
    """
    from .data.real import clip_audio

    rows = table.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    if n_clips is not None:
        rows = rows.head(n_clips)
    out = []
    for clip in rows.itertuples():
        wave = clip_audio(clip.path)
        for kind in kinds:
            audio = transform(wave, kind, seed=seed)
            out.append({"candidate_id": f"{clip.clip_id}/{kind}", "kind": kind, "source_clip_id": clip.clip_id,
                        "speaker": getattr(clip, "speaker", clip.clip_id),
                        "text": "" if kind == "reversed" else clip.text,
                        "repeats_in_audio": 6 if kind == "stutter" else 1,
                        "duration_s": len(audio) / SAMPLE_RATE, "audio": audio})
    return pd.DataFrame(out)


def is_hallucinated_loop(transcript: str, reference: str, *, hit_limit: bool, repeats_in_audio: int = 1) -> bool:
    """A loop the audio does not explain: :func:`~asrinterp_utils.metrics.is_repetitive` and either the model ran
    to the token limit (a runaway) or it repeats an n-gram more often than the audio repeats and the reference
    text itself is not repetitive."""
    check_whole(repeats_in_audio, "is_hallucinated_loop: repeats_in_audio", 1, " (1: the audio says it once)")
    if not is_repetitive(transcript):
        return False
    if hit_limit:
        return True
    repeats = longest_repeat(normalize_text(transcript).split()).repeats
    return repeats > repeats_in_audio + 1 and not is_repetitive(reference or "")


def _candidates_key(lm: Any, candidates: pd.DataFrame, max_new_tokens: int) -> str:
    h = hashlib.sha256()  # the model as the store identifies it: its weights' values, not only its name
    h.update(json.dumps([store.model_digest(lm), max_new_tokens, 2]).encode())
    for cid, audio in zip(candidates.candidate_id, candidates.audio):
        h.update(cid.encode())
        h.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    return h.hexdigest()[:20]


def mine_loops(lm: Any, candidates: pd.DataFrame, *, max_new_tokens: int = 96,
               batch_size: int = run.GREEDY_BATCH, use_cache: bool = True, progress: bool = True) -> pd.DataFrame:
    """Decode every candidate greedily (English, no timestamps, no temperature fallback) and mark the loops.

    Returns ``candidates`` (without the audio) plus ``transcript, n_tokens, hit_limit`` (ran to
    ``max_new_tokens`` without ending), ``loop`` (:func:`~asrinterp_utils.metrics.is_repetitive`), ``repeated``
    (the n-gram repeated most) and ``repeats``, ``hallucinated_loop`` (:func:`is_hallucinated_loop`) and ``wer``
    (against ``text`` where there is one). The table is cached under ``cache_dir("repetition")`` by model, audio and
    ``max_new_tokens``, written atomically; a rerun reads it.
    """
    missing = [c for c in ("candidate_id", "kind", "text", "repeats_in_audio", "audio") if c not in candidates.columns]
    if missing:
        raise ValueError(f"mine_loops: candidates lacks the columns {missing}: build them with candidate_inputs(table, "
                         "kinds) (one row per clip and transformation, with its audio)")
    path = cache_dir("repetition") / f"{_candidates_key(lm, candidates, max_new_tokens)}.csv"
    if use_cache and path.exists():
        return pd.read_csv(path, keep_default_na=False)
    audio = list(candidates.audio)
    done = []
    starts = range(0, len(audio), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=f"mining loops ({getattr(lm, 'name', 'model')})")
    for s in starts:  # each clip's transcript is read from the store if another run decoded it already
        done += store.transcripts(lm, audio[s:s + batch_size], max_new_tokens=max_new_tokens, batch_size=batch_size)
    transcripts, n_tokens = [t.text for t in done], [len(t.text_ids) for t in done]
    table = candidates.drop(columns=["audio"]).copy()
    table["transcript"], table["n_tokens"] = transcripts, n_tokens
    table["hit_limit"] = table.n_tokens >= max_new_tokens
    table["loop"] = [is_repetitive(t) for t in transcripts]
    runs = [longest_repeat(normalize_text(t).split()) for t in transcripts]
    table["repeated"] = [" ".join(r.ngram) for r in runs]
    table["repeats"] = [r.repeats for r in runs]
    table["hallucinated_loop"] = [is_hallucinated_loop(t, ref, hit_limit=h, repeats_in_audio=n)
                                  for t, ref, h, n in zip(transcripts, table.text, table.hit_limit,
                                                          table.repeats_in_audio)]
    table["wer"] = [word_error_rate(ref, t) if ref else float("nan") for ref, t in zip(table.text, transcripts)]
    buffer = StringIO()
    table.to_csv(buffer, index=False)
    write_text_atomic(path, buffer.getvalue())
    return table


def mining_summary(mined: pd.DataFrame) -> pd.DataFrame:
    """Per transformation: candidates tried, loops, hallucinated loops and runaways (loops that hit the limit)."""
    return (mined.assign(runaway=mined.loop & mined.hit_limit)
            .groupby("kind", sort=False)
            .agg(tried=("candidate_id", "size"), loops=("loop", "sum"),
                 hallucinated_loops=("hallucinated_loop", "sum"), runaways=("runaway", "sum"))
            .reset_index())


def split_loops(loops: pd.DataFrame, n_select: int, *, by: str = "kind", seed: int = 0
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deal looping inputs into a **selection** split (where every target is swept and the best is chosen) of at
    least ``n_select`` loops and an **evaluation** split (where only the chosen targets run, and what they resolve
    is counted): ``(selection, evaluation)``, each in ``loops``' order.

    All loops made from one source clip (``source_clip_id``) go to the same side, so no source is both chosen on
    and scored on. Source clips are shuffled (``seed``) and taken in turn for each value of ``by`` (the input's
    kind), so every kind is on both sides when it has loops from more than one source clip."""
    for column in ("source_clip_id", by):
        if column not in loops.columns:
            raise ValueError(f"split_loops: loops lacks {column!r}; give rows of mine_loops (one per looping input)")
    if int(n_select) != n_select or not 1 <= n_select < len(loops):
        raise ValueError(f"split_loops: n_select must be a whole number from 1 to {len(loops) - 1} (there are "
                         f"{len(loops)} loops; both splits need some); got {n_select}")
    sources = list(dict.fromkeys(loops.source_clip_id))
    order = [sources[i] for i in np.random.default_rng(seed).permutation(len(sources))]
    kinds_of = loops.groupby("source_clip_id")[by].agg(set)
    queues = {kind: [s for s in order if kind in kinds_of[s]] for kind in dict.fromkeys(loops[by])}
    size = loops.source_clip_id.value_counts()
    chosen: set = set()
    n_chosen, progress = 0, True
    while n_chosen < n_select and progress:
        progress = False
        for queue in queues.values():
            remaining = [s for s in queue if s not in chosen]
            if n_chosen >= n_select or len(remaining) < 2:  # a kind keeps its last source clip for evaluation
                continue
            chosen.add(remaining[0])
            n_chosen += int(size[remaining[0]])
            progress = True
    in_selection = loops.source_clip_id.isin(chosen)
    if in_selection.all() or not in_selection.any():
        raise ValueError(f"split_loops: the {len(loops)} loops come from {len(sources)} source clips, too few to "
                         f"put {n_select} in a selection split and keep some for evaluation")
    return loops[in_selection], loops[~in_selection]


def resolved_by_clip(sweep: Any) -> pd.DataFrame:
    """Whether each target resolved each looping clip, ``(clips, targets)`` booleans in the sweep's order of clips
    and targets: resolved means the patched transcript is no longer a loop and ends before the token limit, as in
    :func:`loop_resolution` (whose ``resolved`` column is this table's mean per target). The per-clip outcomes are
    what a paired or cross-fitted comparison of targets needs (:func:`asrinterp_utils.stats.cross_fitted_best`)."""
    frame = _with_resolution(sweep)
    table = frame.pivot(index="clip", columns="target", values="resolved")
    return table[list(dict.fromkeys(frame.target))].astype(bool)


def _with_resolution(sweep: Any) -> pd.DataFrame:
    """The sweep's ``to_frame()`` with ``resolved``: no longer a loop, and ended before the token limit."""
    frame = sweep.to_frame()
    frame["resolved"] = ~frame.loop & ~frame.hit_limit
    return frame


def loop_resolution(sweep: Any, references: Sequence[str] | None = None) -> pd.DataFrame:
    """How each target of a :class:`~asrinterp_utils.patching.GenerationSweep` run on looping inputs changed them.

    One row per target: ``resolved`` (fraction of clips whose patched transcript is no longer a loop and ends
    before the token limit), ``still_looping``, ``empty`` (fraction whose patched transcript is empty: a loop
    "resolved" by silence), ``stub`` (two words or fewer, e.g. "the" or "you": resolved by next to silence),
    ``changed`` (fraction whose transcript changed at all) and, with ``references``, the
    mean WER of the patched transcripts (``wer``) beside the unpatched (``baseline_wer``). Sorted by ``resolved``.
    """
    frame = _with_resolution(sweep)
    frame["still_looping"] = frame.loop | frame.hit_limit
    frame["empty"] = frame["text"].str.strip() == ""
    frame["stub"] = frame["text"].map(lambda t: len(normalize_text(t).split()) <= 2)
    frame["changed"] = frame["text"] != frame["baseline_text"]
    if references is not None:
        refs = list(references)
        if len(refs) != len(sweep.baseline_texts):
            raise ValueError(f"loop_resolution: {len(refs)} references for the sweep's {len(sweep.baseline_texts)} "
                             "clips: give one reference per looping clip, in the sweep's order")
        frame["wer"] = [word_error_rate(refs[c], t) for c, t in zip(frame["clip"], frame["text"])]
        frame["baseline_wer"] = [word_error_rate(refs[c], t) for c, t in zip(frame["clip"], frame["baseline_text"])]
    columns = ["resolved", "still_looping", "empty", "stub", "changed"] + (["wer", "baseline_wer"] if references is not None else [])
    table = frame.groupby("target", sort=False)[columns].mean().reset_index()
    return table.sort_values("resolved", ascending=False, kind="stable").reset_index(drop=True)
