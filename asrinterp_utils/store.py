"""A content-addressed store of per-clip results, so that nothing is computed twice.

It holds transcripts (:func:`transcripts`, read by loop mining) and the encoder lens's rows
(:func:`asrinterp_utils.lens.encoder_lens`). Pooled features live in :mod:`asrinterp_utils.extract`'s sharded
folders, keyed the same way (model, clips, hook points, pooling, settings).

A result is filed under a key made of what determines it: the kind of result, the model (name, where its weights
came from, dtype), the clip's samples (sha256 of its float32 bytes) and the settings. The same clip decoded by the
same model with the same settings in another chapter, another process or another build finds the stored result;
anything else that differs (another model, a resampled clip, another token limit) is another key. Values are
small JSON records, one file each, under ``cache_dir("store", kind)``; each is written to a temporary file and
renamed into place, so two writers of the same key (which write the same record) and a reader never see half a
file, and an interrupted run leaves nothing to clean up.

>>> decoded = transcripts(lm, clips, max_new_tokens=96)     # computed once, read from the store afterwards
>>> decoded[0].text, decoded[0].text_ids, decoded[0].hit_limit
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import run
from .runtime import cache_dir, write_text_atomic

__all__ = ["Transcript", "clip_digest", "model_digest", "result_path", "transcripts", "read_record",
           "write_record"]


def clip_digest(clip: np.ndarray) -> str:
    """sha256 of a clip's samples as contiguous float32 (the same audio gives the same digest)."""
    return hashlib.sha256(np.ascontiguousarray(clip, dtype=np.float32).tobytes()).hexdigest()


def model_digest(lm: Any) -> str:
    """What identifies a model's outputs: its name, the source of its weights and its dtype (a random-init model's
    name carries its seed)."""
    return json.dumps([str(getattr(lm, "name", "?")), str(getattr(lm, "source", "?")), str(lm.dtype)])


def result_path(kind: str, lm: Any, clip: np.ndarray, settings: dict) -> Path:
    """Where the result of ``kind`` for this model, clip and settings lives (it may not exist yet)."""
    key = hashlib.sha256(json.dumps([kind, model_digest(lm), clip_digest(clip), settings],
                                    sort_keys=True).encode()).hexdigest()
    return cache_dir("store", kind, key[:2]) / f"{key}.json"


@dataclass(frozen=True)
class Transcript:
    """One clip's greedy transcript: ``text`` (stripped), ``text_ids`` (the text tokens, up to ``<|endoftext|>``)
    and ``hit_limit`` (it ran to ``max_new_tokens`` without ending)."""

    text: str
    text_ids: list[int]
    hit_limit: bool


def read_record(path: Path) -> Any:
    """The JSON record at ``path``, or None when there is none or it is damaged (then it is computed again)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):  # none yet, or a damaged record
        return None


def write_record(path: Path, record: Any) -> None:
    """Write a JSON record atomically (a reader never sees half of it; two writers of one key write the same)."""
    write_text_atomic(path, json.dumps(record))


def _read(path: Path) -> Transcript | None:
    record = read_record(path)
    try:
        return Transcript(str(record["text"]), [int(i) for i in record["text_ids"]], bool(record["hit_limit"]))
    except (KeyError, TypeError, ValueError):  # none, or a damaged record: compute it again
        return None


def transcripts(lm: Any, clips: Sequence[np.ndarray], *, max_new_tokens: int = 128, batch_size: int = 16,
                use_store: bool = True) -> list[Transcript]:
    """Greedy English transcripts (:func:`asrinterp_utils.run.greedy`) of clips (1-D float32 arrays at 16 kHz),
    read from the store where this model already transcribed the same samples with the same limit; the others are
    computed in batches of ``batch_size`` and stored. ``use_store=False`` computes everything and stores nothing."""
    clips = list(clips)
    settings = {"max_new_tokens": int(max_new_tokens), "decoder": "greedy-no-timestamps"}
    paths = [result_path("transcript", lm, c, settings) for c in clips] if use_store else [None] * len(clips)
    out: list[Transcript | None] = [_read(p) if p is not None else None for p in paths]
    missing = [i for i, t in enumerate(out) if t is None]
    for start in range(0, len(missing), batch_size):
        rows = missing[start:start + batch_size]
        decoded = run.greedy(lm, run.encode(lm, [clips[i] for i in rows]).states, max_new_tokens=max_new_tokens)
        texts = decoded.texts(lm.tokenizer) if lm.tokenizer is not None else [" ".join(map(str, t))
                                                                               for t in decoded.text_ids]
        for i, text, ids, hit in zip(rows, texts, decoded.text_ids, decoded.hit_limit):
            out[i] = Transcript(text, list(ids), bool(hit))
            if paths[i] is not None:
                write_record(paths[i], asdict(out[i]))
    return out  # type: ignore[return-value]
