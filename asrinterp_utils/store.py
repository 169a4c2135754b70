"""A content-addressed store of per-clip results, so that nothing is computed twice.

It holds transcripts (:func:`transcripts`, read by loop mining and chapter 2), the encoder output of every clip a
model has encoded (:func:`encoded`: the logit lens, the tuned lens, decoder-side extraction and transcripts read it
instead of running the encoder again; encoder-side extraction files it as a by-product), the mean of every encoder
layer's residual stream over the clip's real frames, filed from the same pass (:func:`encoder_means`: what
encoder-side extraction of ``enc.*.resid_post`` pools, so a probe over clips that another chapter has already
encoded runs no encoder) and the encoder lens's rows (:func:`asrinterp_utils.lens.encoder_lens`). Extracted
features live in :mod:`asrinterp_utils.extract`'s sharded folders, keyed the same way (model, clips, hook points,
pooling, settings).

A result is filed under a key made of what determines it: the kind of result, the model (name, where its weights
came from, dtype, a fingerprint of the weights' values), the clip's samples (sha256 of its float32 bytes) and the
settings. The same clip decoded by the same model with the same settings in another chapter, another process or
another build finds the stored result;
anything else that differs (another model, a resampled clip, another token limit) is another key. Values are
small JSON records (encoder outputs: one tensor file, ``(1500, d_model)`` in the model's dtype), one file each,
under ``cache_dir("store", kind)``; each is written to a temporary file and renamed into place, so two writers of
the same key (which write the same record) and a reader never see half a file, and an interrupted run leaves
nothing to clean up.

>>> decoded = transcripts(lm, clips, max_new_tokens=96)     # computed once, read from the store afterwards
>>> decoded[0].text, decoded[0].text_ids, decoded[0].hit_limit
>>> encoder_means(lm, clips).shape                        # (batch, encoder layers, d_model), filed by every pass
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import run
from .cache import cache_activations
from .hooks import active_hook_count, hf_model, whisper_core
from .models import weights_fingerprint
from .runtime import atomic_path, cache_dir, write_text_atomic

__all__ = ["Transcript", "clip_digest", "decoded", "encoded", "encoder_means", "file_means", "file_states",
           "model_digest", "result_path", "transcripts", "read_record", "storable", "write_record"]

# Bump when what an encoder-output (or encoder-means) file holds changes, so that old files are not read as new ones.
STATES_FORMAT = 1
MEANS_FORMAT = 1


def clip_digest(clip: np.ndarray) -> str:
    """sha256 of a clip's samples as contiguous float32 (the same audio gives the same digest)."""
    return hashlib.sha256(np.ascontiguousarray(clip, dtype=np.float32).tobytes()).hexdigest()


def model_digest(lm: Any) -> str:
    """What identifies a model's outputs: its name, the source of its weights, its dtype and the fingerprint of the
    weights' values (:func:`~asrinterp_utils.models.weights_fingerprint`: a model whose weights were edited, or a
    different model under the same name, never reads another's results)."""
    return json.dumps([str(getattr(lm, "name", "?")), str(getattr(lm, "source", "?")), str(lm.dtype),
                       weights_fingerprint(lm)])


def result_path(kind: str, lm: Any, clip: np.ndarray, settings: dict, *, suffix: str = ".json") -> Path:
    """Where the result of ``kind`` for this model, clip and settings lives (it may not exist yet)."""
    key = hashlib.sha256(json.dumps([kind, model_digest(lm), clip_digest(clip), settings],
                                    sort_keys=True).encode()).hexdigest()
    return cache_dir("store", kind, key[:2]) / f"{key}{suffix}"


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


# ---------------------------------------------------------------------------------------------------------------
# Encoder outputs
# ---------------------------------------------------------------------------------------------------------------

def _states_path(lm: Any, clip: np.ndarray) -> Path:
    return result_path("encoder_states", lm, clip, {"format": STATES_FORMAT}, suffix=".pt")


def storable(lm: Any) -> bool:
    """Whether the encoder output is the plain model's: no hook of this package attached (a patch or a cache
    outside needs the encoder to run) and the model in eval mode (dropout off)."""
    return active_hook_count(lm) == 0 and not whisper_core(lm).training


def _read_states(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    try:
        states = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # none yet (FileNotFoundError), or a damaged file (torch raises several kinds): compute it
        return None
    return states if isinstance(states, torch.Tensor) and tuple(states.shape) == shape else None


def file_states(lm: Any, clips: Sequence[np.ndarray], states: torch.Tensor, *, replace: bool = False) -> None:
    """File the plain encoder output ``states (batch, 1500, d_model)`` of ``clips`` (one row per clip) for later
    :func:`encoded` calls; a clip already filed is kept unless ``replace`` (a damaged file is replaced). The caller
    vouches that ``states`` are the unpatched model's (read-only caches may have been attached, e.g. extraction's
    pooling hooks)."""
    if len(clips) != len(states):
        raise ValueError(f"file_states: {len(clips)} clips but {len(states)} rows of encoder states")
    for clip, row in zip(clips, states):
        path = _states_path(lm, clip)
        if replace or not path.exists():
            with atomic_path(path) as tmp:
                torch.save(row.detach().to("cpu").clone(), tmp)  # clone: save this row, not the batch's storage


def _means_path(lm: Any, clip: np.ndarray) -> Path:
    return result_path("encoder_means", lm, clip, {"points": "enc.*.resid_post", "pool": "mean",
                                                   "format": MEANS_FORMAT}, suffix=".pt")


def _resid_points(lm: Any) -> list[str]:
    return [f"enc.{i}.resid_post" for i in range(len(whisper_core(lm).encoder.layers))]


def _encode_and_file(lm: Any, clips: Sequence[np.ndarray], features: torch.Tensor, n_frames: torch.Tensor,
                     batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the plain encoder on ``features (n, n_mels, 3000)`` of ``clips`` in batches of ``batch_size``, and file
    each clip's output and its per-layer residual means. Returns ``states (n, 1500, d_model)`` and ``means (n,
    encoder layers, d_model)`` float32 on the CPU: every ``enc.{i}.resid_post`` averaged over the clip's
    ``n_frames`` real frames, as encoder-side extraction pools it."""
    points = _resid_points(lm)
    states, means = [], []
    for start in range(0, len(clips), batch_size):
        rows = slice(start, start + batch_size)
        with cache_activations(lm, points, pool="mean", n_frames=n_frames[rows]) as cache:  # one pass per block
            states.append(run.encode_features(lm, features[rows], batch_size=batch_size))
        means.append(torch.stack([cache[p] for p in points], dim=1).float().cpu())
        file_states(lm, clips[rows], states[-1], replace=True)
        file_means(lm, clips[rows], means[-1])
    return torch.cat(states), torch.cat(means)


def file_means(lm: Any, clips: Sequence[np.ndarray], means: torch.Tensor) -> None:
    """File the plain model's per-layer residual means ``(batch, encoder layers, d_model)`` of ``clips`` (each
    ``enc.{i}.resid_post`` averaged over the clip's real frames) for later :func:`encoder_means` calls. The caller
    vouches that they are the unpatched model's."""
    n_layers = len(whisper_core(lm).encoder.layers)
    if len(clips) != len(means) or means.ndim != 3 or means.shape[1] != n_layers:
        raise ValueError(f"file_means: {len(clips)} clips need means (batch, {n_layers} layers, d_model); got "
                         f"{tuple(means.shape)}")
    for clip, row in zip(clips, means):
        with atomic_path(_means_path(lm, clip)) as tmp:
            torch.save(row.detach().float().cpu().clone(), tmp)  # clone: this row, not the batch's storage


@torch.no_grad()
def encoded(lm: Any, clips: Sequence[np.ndarray], *, batch_size: int = 16, use_store: bool = True) -> run.Encoded:
    """:func:`asrinterp_utils.run.encode`, reading each clip's encoder output from the store where this model
    already encoded the same samples (in any chapter, process or build) and filing the others (with their
    :func:`encoder_means`, from the same pass).

    The store is used only for the plain model: with a hook of this package attached (a ``patch`` or a
    ``cache_activations`` block around the call) or the model in training mode, the encoder runs and nothing is
    read or filed. ``use_store=False`` does the same. Returns :class:`~asrinterp_utils.run.Encoded`
    (``states``: ``(batch, 1500, d_model)`` on the model's device and dtype).
    """
    clips = list(clips)
    if not use_store or not storable(lm):
        return run.encode(lm, clips, batch_size=batch_size)
    features, n_frames = lm.features(clips)
    core = whisper_core(lm)
    param = next(core.parameters())
    shape = (int(core.config.max_source_positions), int(core.config.d_model))
    rows: list[torch.Tensor | None] = [_read_states(_states_path(lm, c), shape) for c in clips]
    missing = [i for i, r in enumerate(rows) if r is None]
    if missing:
        computed, _ = _encode_and_file(lm, [clips[i] for i in missing], features[missing], n_frames[missing],
                                       batch_size)
        for i, row in zip(missing, computed):
            rows[i] = row
    states = torch.stack([r.to(device=param.device, dtype=param.dtype) for r in rows])  # type: ignore[union-attr]
    return run.Encoded(features, n_frames, states)


@torch.no_grad()
def encoder_means(lm: Any, clips: Sequence[np.ndarray], *, batch_size: int = 16,
                  features: torch.Tensor | None = None, n_frames: torch.Tensor | None = None) -> torch.Tensor:
    """Every encoder layer's residual stream (``enc.{i}.resid_post``) averaged over each clip's real frames,
    ``(batch, encoder layers, d_model)`` float32 on the CPU: what ``extract_features(lm, clips,
    "enc.*.resid_post")`` pools. Read from the store where this model has already encoded the same samples (any
    :func:`encoded` call files them from its pass); the other clips are encoded, and filed, in batches of
    ``batch_size``. ``features``/``n_frames``: the clips' ``lm.features(clips)`` when the caller has them.

    Only for the plain model: under a hook of this package or in training mode it raises (run the encoder inside
    your own ``cache_activations`` block instead), since stored means are the unpatched model's.
    """
    clips = list(clips)
    if not storable(lm):
        raise RuntimeError("encoder_means reads the plain model's stored means, but a hook of this package is "
                           "attached (or the model is in training mode); pool under your patch with "
                           "cache_activations(lm, 'enc.*.resid_post', pool='mean', n_frames=...) instead.")
    if (features is None) != (n_frames is None):
        raise ValueError("encoder_means: give both features and n_frames (lm.features(clips)), or neither")
    if features is not None and not len(features) == len(n_frames) == len(clips):
        raise ValueError(f"encoder_means: {len(clips)} clips but {len(features)} rows of features and "
                         f"{len(n_frames)} frame counts")
    n_layers, d_model = len(whisper_core(lm).encoder.layers), int(whisper_core(lm).config.d_model)
    rows: list[torch.Tensor | None] = [_read_states(_means_path(lm, c), (n_layers, d_model)) for c in clips]
    missing = [i for i, r in enumerate(rows) if r is None]
    if missing:
        if features is None:
            features, n_frames = lm.features([clips[i] for i in missing])
        else:
            features, n_frames = features[missing], n_frames[missing]
        _, computed = _encode_and_file(lm, [clips[i] for i in missing], features, n_frames, batch_size)
        for i, row in zip(missing, computed):
            rows[i] = row
    return torch.stack([r.float() for r in rows])  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------------------------
# Transcripts
# ---------------------------------------------------------------------------------------------------------------

def _read(path: Path) -> Transcript | None:
    record = read_record(path)
    try:
        return Transcript(str(record["text"]), [int(i) for i in record["text_ids"]], bool(record["hit_limit"]))
    except (KeyError, TypeError, ValueError):  # none, or a damaged record: compute it again
        return None


def transcripts(lm: Any, clips: Sequence[np.ndarray], *, max_new_tokens: int = 128,
                batch_size: int = run.GREEDY_BATCH, use_store: bool = True,
                states: torch.Tensor | None = None) -> list[Transcript]:
    """Greedy English transcripts (:func:`asrinterp_utils.run.greedy`) of clips (1-D float32 arrays at 16 kHz),
    read from the store where this model already transcribed the same samples with the same limit; the others are
    decoded in batches of ``batch_size`` (the encoder runs in its own batches) and stored. ``use_store=False``, or a hook of this package attached (a
    patch around the call), computes everything and stores nothing. ``states``: the clips' encoder output
    ``(batch, 1500, d_model)`` when the caller already has it (from :func:`encoded`), so it is not read again."""
    clips = list(clips)
    if states is not None and len(states) != len(clips):
        raise ValueError(f"transcripts: {len(states)} rows of encoder states for {len(clips)} clips")
    use_store = use_store and storable(lm)  # under a patch the transcripts are the patched model's: not stored
    settings = {"max_new_tokens": int(max_new_tokens), "decoder": "greedy-no-timestamps"}
    paths = [result_path("transcript", lm, c, settings) for c in clips] if use_store else [None] * len(clips)
    out: list[Transcript | None] = [_read(p) if p is not None else None for p in paths]
    missing = [i for i, t in enumerate(out) if t is None]
    for start in range(0, len(missing), batch_size):
        rows = missing[start:start + batch_size]
        rows_states = (encoded(lm, [clips[i] for i in rows], use_store=use_store).states if states is None
                       else states[torch.as_tensor(rows, device=states.device)])
        decoded = run.greedy(lm, rows_states, max_new_tokens=max_new_tokens)
        texts = decoded.texts(lm.tokenizer)
        for i, text, ids, hit in zip(rows, texts, decoded.text_ids, decoded.hit_limit):
            out[i] = Transcript(text, list(ids), bool(hit))
            if paths[i] is not None:
                write_record(paths[i], asdict(out[i]))
    return out  # type: ignore[return-value]


def decoded(lm: Any, clips: Sequence[np.ndarray], *, max_new_tokens: int = 128, batch_size: int = run.GREEDY_BATCH,
            use_store: bool = True, states: torch.Tensor | None = None) -> run.Decoded:
    """:func:`transcripts` laid out as :func:`asrinterp_utils.run.greedy` returns them (:class:`run.Decoded`:
    ``ids (batch, n_prompt + n_steps)``, the prompt, each row's tokens, then ``<|endoftext|>`` padding), for work
    that teacher-forces the model's own transcripts (lenses, decoder-side extraction). Arguments as for
    :func:`transcripts`."""
    rows = transcripts(lm, clips, max_new_tokens=max_new_tokens, batch_size=batch_size, use_store=use_store,
                       states=states)
    prompt = list(lm.prompt_ids())
    end_of_text = int(hf_model(lm).generation_config.eos_token_id)
    n_steps = max(len(t.text_ids) + (not t.hit_limit) for t in rows)
    ids = torch.tensor([prompt + t.text_ids + [end_of_text] * (n_steps - len(t.text_ids)) for t in rows],
                       dtype=torch.long)
    return run.Decoded(ids=ids, text_ids=[list(t.text_ids) for t in rows], hit_limit=[t.hit_limit for t in rows],
                       n_prompt=len(prompt))
