"""Pooled features for many clips: written shard by shard, resumable, and split across processes.

A probe or a sparse autoencoder wants one vector per clip and per hook point, for thousands of clips: more
than fits in memory as raw audio or as full activations. :func:`extract_features` walks the clips batch by
batch, pools each batch's activations on the fly with :func:`~asrinterp_utils.cache.cache_activations`, and
writes the pooled vectors to disk one shard (``shard_size`` clips) at a time:

>>> store = extract_features(lm, clips, "enc.*.resid_post", out_dir="feats/enc", pool="mean")
>>> store.load().shape         # (n_clips, n_points, d_model) float32, in clip order
(1000, 4, 384)

At any moment it holds one batch of audio and activations, plus the pooled vectors of the current shard.
``clips`` may be a list of arrays, or anything that loads them by index: :class:`LazyClips` (a table of wav
paths plus a loader), a custom ``Sequence``, or a function ``i -> clip`` with ``n_clips``.

What is pooled
--------------
``side="encoder"``: only the encoder runs; ``pool="mean"`` or ``"max"`` over the clip's real frames
(``n_valid_frames`` of :meth:`~asrinterp_utils.models.LoadedModel.features`), never over the padding up to 30 s;
or, with ``spans`` (one ``(start_s, end_s)`` per clip, e.g. a word's timestamps), over that span's frames only.

``side="decoder"``: the model decodes its own greedy hypothesis (:func:`asrinterp_utils.store.decoded`: the
encoder output and the transcript are read from the store where earlier work on the same clip filed them, and
computed at most once per batch otherwise), then the decoder is teacher-forced on it. Encoder-side extraction
files each clip's encoder output in the store as it goes; the mean of ``enc.*.resid_post`` over all real frames
(``pool="mean"``, no spans, the plain model) is read from the store's :func:`~asrinterp_utils.store.encoder_means`
where any earlier plain pass of the same model over the same clip filed it, so no encoder runs for those clips.
The pooled span is the *generated tokens*: the text tokens and the closing ``<|endoftext|>`` (absent only
when the text was cut at ``max_new_tokens``), so it is never empty, not even for an empty transcript. One
teacher-forced pass (:func:`asrinterp_utils.run.teacher_force`) runs the prompt and the transcript; the prompt's
positions (``<|startoftranscript|>`` ...) are left out of the pool, and so is the padding after each row's end.
``pool`` is ``"mean"``, ``"max"`` or ``"last"`` (the state at the final generated token).

On disk
-------
::

    out_dir/config.json               what is extracted and its hash; written first, checked by every rerun
    out_dir/shard-00000.safetensors   features (n, n_points, d) float32, clip_index (n,), n_positions (n,),
    out_dir/shard-00001.safetensors   decoder side: token_ids (n, max_new_tokens), -1 padded; metadata: config hash
    out_dir/manifest.json             written last, when every shard is there

A shard is written to a hidden temporary file and renamed, so a shard file that exists is complete: a rerun
after an interruption skips it, and removes temporary files left by the interrupted run. A folder written with
another configuration (hook points, pool, side, model, clip list, shard size, ...) is refused with
:class:`ConfigMismatchError` instead of mixing shards. The model is identified by its name, dtype and config (not
a hash of its weights: too slow for large models); the clips by ``clip_ids``, the items of a :class:`LazyClips` or
the samples of a list of arrays (a function or other lazy sequence only by its length: pass ``clip_ids``). The
batch size, device and number of processes are not part of the configuration: they do not change which clip goes
into which shard.

Several processes
-----------------
With ``num_processes=n``, process ``i`` computes shards ``i, i + n, i + 2n, ...`` and writes only those; after all
have finished, :func:`merge_manifests` (or :meth:`FeatureStore.open`) checks that every shard is there and writes
the manifest. :func:`run_with_accelerate` does this wiring with Hugging Face Accelerate, so the same script runs
as one process (``python script.py``) or several (``accelerate launch --num_processes 2 script.py`` with two GPUs,
``torchrun --nproc_per_node 2 script.py`` on CPUs); ``scripts/extract_features.py`` is such a script.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from . import run, store
from .cache import cache_activations
from .hooks import hf_model, resolve_hook_points
from .audio import SECONDS_PER_FRAME
from .models import attention_backend, weights_fingerprint
from .runtime import atomic_path, check_whole, write_text_atomic

__all__ = ["ConfigMismatchError", "FeatureStore", "LazyClips", "Shard", "TableFeatures", "extract_features",
           "merge_manifests", "plan_shards", "pool_batch", "run_with_accelerate", "accelerate_state", "table_features",
           "log_mel_features"]

FORMAT = 2  # bump when the folder layout changes: older folders are then refused (2: decoder shards keep tokens)
POOLS = ("mean", "max", "last")
SIDES = ("encoder", "decoder")
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"

PathLike = Union[str, os.PathLike]


class ConfigMismatchError(ValueError):
    """The output folder holds features extracted with another configuration; the message lists what differs."""


# ---------------------------------------------------------------------------------------------------------------
# Clips, loaded lazily
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LazyClips(Sequence):
    """A sequence of clips loaded one at a time: ``clips[i]`` is ``loader(items[i])``.

    ``items`` is anything indexable by position: a list of paths, a pandas Series (``table.path``) or DataFrame
    (then ``loader`` gets a row). E.g. ``LazyClips(table.path, clip_audio)``. The items (their ``repr``) identify
    the clips in the folder's configuration, so a changed clip list is noticed without loading any audio.
    """

    items: Any
    loader: Callable[[Any], np.ndarray]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"LazyClips takes one integer index, got {type(i).__name__}")
        items = self.items.iloc if hasattr(self.items, "iloc") else self.items
        return self.loader(items[i])

    def clip_keys(self) -> Iterator[str]:
        """One string per clip that identifies it (the item's ``repr``; a DataFrame row as a record)."""
        if hasattr(self.items, "columns"):  # a DataFrame: one record per row
            return (repr(r) for r in self.items.to_dict("records"))
        return (repr(x) for x in self.items)


def _clip_getter(clips: Any, n_clips: int | None) -> tuple[int, Callable[[int], np.ndarray]]:
    """The number of clips and a function ``i -> clip``."""
    if callable(clips) and not hasattr(clips, "__getitem__"):
        if n_clips is None:
            raise ValueError("clips is a function i -> clip: pass n_clips as well.")
        return int(n_clips), clips
    n = len(clips)
    if n_clips is not None and int(n_clips) != n:
        raise ValueError(f"n_clips={n_clips} but clips holds {n}; leave n_clips out for a sequence.")
    return n, clips.__getitem__


def _clips_fingerprint(clips: Any, n: int, clip_ids: Sequence | None) -> dict:
    """What identifies the clip list, for the folder's configuration: ``{"by": how, "sha256": hash}``.

    ``clip_ids`` if given; else the items of a :class:`LazyClips`; else the samples of an in-memory list of
    arrays. A function or another lazy sequence is identified only by its length (pass ``clip_ids``).
    """
    digest = hashlib.sha256()
    if clip_ids is not None:
        if len(clip_ids) != n:
            raise ValueError(f"clip_ids has {len(clip_ids)} entries for {n} clips.")
        how = "clip_ids"
        for key in clip_ids:
            digest.update(str(key).encode() + b"\0")
    elif isinstance(clips, LazyClips):
        how = "items"
        for key in clips.clip_keys():
            digest.update(key.encode() + b"\0")
    elif isinstance(clips, (list, tuple)):
        how = "samples"
        for clip in clips:
            samples = np.ascontiguousarray(clip, dtype=np.float32)
            digest.update(str(samples.shape).encode() + samples.tobytes())
    else:
        how = "count only (pass clip_ids to identify the clips)"
    digest.update(str(n).encode())
    return {"by": how, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------------------------------------------------------
# The configuration of a folder
# ---------------------------------------------------------------------------------------------------------------


def _model_fingerprint(lm: Any) -> dict:
    """Name, dtype, a hash of the Hugging Face config and the fingerprint of the weights' values
    (:func:`~asrinterp_utils.models.weights_fingerprint`, remembered while the weights do not change)."""
    model = hf_model(lm)
    config = {k: v for k, v in model.config.to_dict().items()
              if k not in ("transformers_version", "_name_or_path", "dtype", "torch_dtype")
              and "attn_implementation" not in k}
    text = json.dumps(config, sort_keys=True, default=str)
    return {"model": str(getattr(lm, "name", type(model).__name__)),
            "model_config_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "dtype": str(next(model.parameters()).dtype), "weights_sha1": weights_fingerprint(model)}


def _config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _read_config(out_dir: Path) -> dict:
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} has no {CONFIG_FILE}: it is not a folder written by extract_features.")
    return json.loads(path.read_text())


def _claim_folder(out_dir: Path, config: dict) -> str:
    """Create ``out_dir`` with this configuration, or check that it already holds this configuration. Returns
    the config hash; raises :class:`ConfigMismatchError` when the folder was written with another one."""
    config_hash = _config_hash(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / CONFIG_FILE).is_file():
        old = _read_config(out_dir)
        if old.get("hash") != config_hash:
            raise ConfigMismatchError(_explain_mismatch(out_dir, old.get("config", {}), config))
    else:  # several processes may write it at once: same content, atomic rename
        write_text_atomic(out_dir / CONFIG_FILE, json.dumps({"hash": config_hash, "config": config}, indent=1))
    return config_hash


def _explain_mismatch(out_dir: Path, old: dict, new: dict) -> str:
    lines = [f"  {key}: the folder has {old.get(key)!r}, this call asks for {new.get(key)!r}"
             for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return (f"{out_dir} holds features extracted with another configuration:\n" + "\n".join(lines) +
            "\nIts shards cannot be mixed with these: pass another out_dir, or delete this one to start over.")


# ---------------------------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Clips ``start .. stop - 1``, stored in :attr:`file`."""

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def file(self) -> str:
        return f"shard-{self.index:05d}.safetensors"


def plan_shards(n_clips: int, shard_size: int) -> list[Shard]:
    """Consecutive shards of ``shard_size`` clips (the last one shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return [Shard(i, start, min(start + shard_size, n_clips))
            for i, start in enumerate(range(0, n_clips, shard_size))]


def _remove_temp_files(out_dir: Path, shard: Shard) -> None:
    """Remove what an interrupted write of ``shard`` left behind (only this shard's: other processes may be
    writing theirs)."""
    for leftover in out_dir.glob(f".{shard.file}.tmp-*"):
        leftover.unlink(missing_ok=True)


def _shard_is_done(out_dir: Path, shard: Shard, config_hash: str) -> bool:
    """Whether the shard's file exists and holds this configuration's clips ``start .. stop - 1``."""
    from safetensors import safe_open

    path = out_dir / shard.file
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="numpy") as f:
            written_by = (f.metadata() or {}).get("config_hash")
            clip_index = f.get_tensor("clip_index")
    except Exception:  # unreadable (a damaged disk; renames never leave half files): compute it again
        return False
    if written_by != config_hash:
        raise ConfigMismatchError(
            f"{path} was written with another configuration (hash {written_by}, this call {config_hash}); its "
            "folder's config.json was changed or removed. Pass another out_dir, or delete this one to start over.")
    return clip_index.tolist() == list(range(shard.start, shard.stop))


def _write_shard(out_dir: Path, shard: Shard, features: np.ndarray, n_positions: np.ndarray,
                 config_hash: str, token_ids: Union[np.ndarray, None] = None) -> None:
    """Write ``features (len(shard), n_points, d)`` (and, decoder side, the generated ``token_ids (len(shard),
    n_new)``, -1 after each row's end) atomically: a temporary file, then a rename."""
    from safetensors.numpy import save_file

    path = out_dir / shard.file
    tensors = {"features": np.ascontiguousarray(features, dtype=np.float32),
               "clip_index": np.arange(shard.start, shard.stop, dtype=np.int64),
               "n_positions": np.asarray(n_positions, dtype=np.int64)}
    if token_ids is not None:
        tensors["token_ids"] = np.ascontiguousarray(token_ids, dtype=np.int64)
    with atomic_path(path, tmp=path.with_name(f".{shard.file}.tmp-{os.getpid()}")) as tmp:
        save_file(tensors, str(tmp), metadata={"config_hash": config_hash, "shard": str(shard.index)})


# ---------------------------------------------------------------------------------------------------------------
# One batch
# ---------------------------------------------------------------------------------------------------------------


def _check_pooling(side: Any, pool: Any) -> tuple[str, ...]:
    """``pool`` as a tuple of pool names, after checking it against ``side``."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    pools = _pools(pool)
    if not pools or any(p not in POOLS for p in pools) or len(set(pools)) != len(pools):
        raise ValueError(f"pool must be one of {POOLS}, or (decoder side) a tuple of distinct ones, got {pool!r}")
    if "last" in pools and side == "encoder":
        raise ValueError('pool="last" takes the final generated token: it needs side="decoder".')
    if not isinstance(pool, str) and side == "encoder":
        raise ValueError("several pools at once are for the decoder side (its activations per batch are small); on "
                         "the encoder side, extract each pool into its own folder.")
    return pools


def _check_spans(spans: Any, n: int, side: str) -> list[tuple[float, float]] | None:
    """One ``(start_s, end_s)`` per clip, as floats (None stays None)."""
    if spans is None:
        return None
    if side != "encoder":
        raise ValueError("spans select encoder frames: they need side='encoder'.")
    try:
        spans = [(float(a), float(b)) for a, b in spans]
    except (TypeError, ValueError) as e:
        raise ValueError(f"spans must be one (start_s, end_s) pair of seconds per clip; {e}") from None
    if len(spans) != n:
        raise ValueError(f"spans has {len(spans)} entries for {n} clips: give one (start_s, end_s) per clip.")
    return spans


def _check_points(lm: Any, names: Any, side: str) -> list[str]:
    """Resolve ``names`` to hook-point names and check they belong to ``side`` and can be pooled."""
    points = resolve_hook_points(lm, names)
    if not points:
        raise ValueError(f"{names!r} selects no hook point.")
    wanted = "enc" if side == "encoder" else "dec"
    wrong = [p.name for p in points if p.side != wanted]
    if wrong:
        raise ValueError(f"side={side!r} runs only the {side}, but {wrong} are not {side} points; extract them "
                         "with the other side, into another folder.")
    patterns = [p.name for p in points if p.is_pattern]
    if patterns:
        raise ValueError(f"{patterns} are attention patterns, which cannot be pooled into feature vectors.")
    return [p.name for p in points]


def _generated_lengths(new_ids: torch.Tensor, end_of_text: int) -> torch.Tensor:
    """``(batch,)``: generated tokens per row of ``new_ids (batch, n_new)``, up to and including the first
    ``<|endoftext|>`` (all ``n_new`` when a row has none: cut at ``max_new_tokens``)."""
    is_end = new_ids == end_of_text
    first_end = is_end.int().argmax(dim=1)
    return torch.where(is_end.any(dim=1), first_end + 1, torch.full_like(first_end, new_ids.shape[1]))


@torch.no_grad()
def pool_batch(lm: Any, audio: Sequence[np.ndarray], names: Sequence[str], *, side: str = "encoder",
               pool: str = "mean", max_new_tokens: int = 128,
               spans: Union[Sequence, None] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of one batch of clips (see the module docstring for what is pooled).

    Args:
        lm: a :class:`~asrinterp_utils.models.LoadedModel` (``features``, ``generate_ids``, ``prompt_ids``).
        audio: the batch's clips, each ``(n_samples,)`` float32 at 16 kHz.
        names: exact hook-point names, all on ``side``.
        spans: (encoder side) one ``(start_s, end_s)`` per clip, e.g. a word's timestamps: pool only the encoder
            frames that overlap it (``floor(start_s / 0.02)`` to ``ceil(end_s / 0.02)``, within the clip's real
            frames); None pools all real frames.

    Returns:
        ``features (batch, n_points, d)`` float32 on the CPU, points in the order of ``names``, and
        ``n_positions (batch,)``: the frames (encoder) or generated tokens (decoder) that were pooled.
    """
    _check_pooling(side, pool)
    check_whole(max_new_tokens, "max_new_tokens", 1)
    if len(audio) == 0:
        raise ValueError("pool_batch: audio holds no clips")
    names = [names] if isinstance(names, str) else list(names)
    if sorted(_check_points(lm, names, side)) != sorted(names):
        raise ValueError(f"pool_batch: names must be exact hook-point names (no wildcards), one per feature; got "
                         f"{names}")
    features, n_positions, _ = _pool_batch(lm, audio, names, side=side, pool=pool, max_new_tokens=max_new_tokens,
                                           spans=_check_spans(spans, len(audio), side))
    return features, n_positions


def _pool_batch(lm: Any, audio: Sequence[np.ndarray], names: Sequence[str], *, side: str, pool: str,
                max_new_tokens: int,
                spans: Union[Sequence, None] = None) -> tuple[torch.Tensor, torch.Tensor, Union[torch.Tensor, None]]:
    """:func:`pool_batch`, plus (decoder side) the generated tokens ``(batch, n_new)`` on the CPU (None for the
    encoder side)."""
    if side == "encoder":
        feats, n_frames = lm.features(audio)  # (batch, n_mels, 3000), (batch,)
        first = None
        if spans is not None:
            first, n_frames = _span_frames(spans, n_frames)
        plain = store.storable(lm)  # no patch around this call: the encoder output is the model's own
        layers = _resid_layers(lm, names)
        if plain and first is None and pool == "mean" and layers is not None:
            # the per-layer means the store files from every plain encoder pass (this one's too, when missing)
            means = store.encoder_means(lm, audio, features=feats, n_frames=n_frames)  # (batch, layers, d_model)
            return means[:, layers], n_frames, None
        with cache_activations(lm, names, pool=pool, n_frames=n_frames, first_frames=first) as cache:
            states = run.encode_features(lm, feats)
        if plain:  # filed for later decoder-side work on the same clips (lenses, transcripts, extraction)
            store.file_states(lm, audio, states)
        return _stack(cache, names), n_frames - (0 if first is None else first), None

    # the encoder output (batch, frames, d_model) and the greedy transcripts, read from the store where another
    # chapter already computed them for these clips
    states = store.encoded(lm, audio).states
    ids = store.decoded(lm, audio, max_new_tokens=max_new_tokens, states=states).ids  # (batch, n_prompt + n_new)
    n_prompt = len(lm.prompt_ids())
    n_generated = _generated_lengths(ids[:, n_prompt:], int(hf_model(lm).generation_config.eos_token_id))
    new_ids = ids[:, n_prompt:].cpu()
    with cache_activations(lm, names) as cache:  # one teacher-forced pass over the prompt and the transcript
        run.teacher_force(lm, states, ids, logits=False)
    pools = _pools(pool)
    # (batch, n_points, n_new, d): the generated positions only (the prompt is left out), padding masked below
    acts = torch.stack([cache[n][:, n_prompt:].float() for n in names], dim=1)
    positions = torch.arange(acts.shape[2], device=acts.device)
    real = (positions[None, :] < n_generated.to(acts.device)[:, None])[:, None, :, None]  # (batch, 1, n_new, 1)
    pooled = []
    for p in pools:
        if p == "last":
            pooled.append(acts[torch.arange(len(acts)), :, n_generated - 1])
        elif p == "mean":
            pooled.append((acts * real).sum(dim=2) / n_generated.to(acts)[:, None, None])
        else:  # max
            pooled.append(acts.masked_fill(~real, float("-inf")).amax(dim=2))
    features = pooled[0] if isinstance(pool, str) else torch.stack(pooled, dim=1)  # (batch, [n_pools,] n_points, d)
    return features.cpu(), n_generated, new_ids


def _resid_layers(lm: Any, names: Sequence[str]) -> Union[list[int], None]:
    """The encoder layers of ``names`` when every one is an ``enc.{i}.resid_post`` point, else None."""
    points = [resolve_hook_points(lm, name)[0] for name in names]  # one each, in the order of names
    if all(p.side == "enc" and p.point == "resid_post" and p.layer is not None for p in points):
        return [int(p.layer) for p in points]
    return None


def _span_frames(spans: Sequence, n_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and end (exclusive) encoder frames of each ``(start_s, end_s)`` span, within the real frames."""
    first, end = [], []
    for (start_s, end_s), n in zip(spans, n_frames.tolist()):
        if not 0 <= start_s < end_s:
            raise ValueError(f"a span must satisfy 0 <= start_s < end_s, got ({start_s}, {end_s})")
        a = int(math.floor(start_s / SECONDS_PER_FRAME))
        b = min(int(math.ceil(end_s / SECONDS_PER_FRAME - 1e-9)), n)
        if a >= b:
            raise ValueError(f"the span ({start_s}, {end_s}) s lies outside the clip's {n * SECONDS_PER_FRAME:.2f} s")
        first.append(a)
        end.append(b)
    return torch.tensor(first), torch.tensor(end)


def _pools(pool: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """``pool`` as a tuple of pool names (one name, or several for the decoder side)."""
    return (pool,) if isinstance(pool, str) else tuple(pool)


def _padded_tokens(new_ids: torch.Tensor, n_generated: torch.Tensor, width: int) -> np.ndarray:
    """``(batch, width)`` int64: each row's generated tokens (``<|endoftext|>`` included), then -1."""
    out = np.full((len(new_ids), width), -1, dtype=np.int64)
    for row, (ids, n) in enumerate(zip(new_ids.tolist(), n_generated.tolist())):
        out[row, :n] = ids[:n]
    return out


def _stack(cache: Any, names: Sequence[str]) -> torch.Tensor:
    """``(batch, n_points, d)`` from pooled ``(batch, d)`` entries."""
    shapes = {n: tuple(cache[n].shape[1:]) for n in names}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"the hook points have different widths {shapes}; extract points of one width per "
                         "folder (e.g. resid_post and mlp_hidden separately).")
    return torch.stack([cache[n] for n in names], dim=1).float()


# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------


def extract_features(lm: Any, clips: Any, names: Any, *, out_dir: PathLike, pool: Union[str, Sequence[str]] = "mean",
                     side: str = "encoder", batch_size: int = 8, shard_size: int = 64, max_new_tokens: int = 128,
                     n_clips: int | None = None, clip_ids: Sequence | None = None, progress: bool = True,
                     process_index: int = 0, num_processes: int = 1,
                     attention: Union[str, None] = "sdpa",
                     spans: Union[Sequence, None] = None) -> "FeatureStore | None":
    """Pool the activations at ``names`` for every clip and write them to ``out_dir`` in shards.

    Args:
        lm: a :class:`~asrinterp_utils.models.LoadedModel`.
        clips: 16 kHz float32 clips ``(n_samples,)``: a list, a :class:`LazyClips` or other sequence loading them by
            index, or a function ``i -> clip`` (then pass ``n_clips``). One batch is loaded at a time.
        names: hook points (names, wildcard patterns such as ``"enc.*.resid_post"``, or a predicate), all on
            ``side`` and of one width.
        out_dir: the folder (created if needed). A folder holding another configuration is refused.
        pool: ``"mean"`` or ``"max"`` over the clip's real frames / generated tokens; ``"last"`` (decoder only):
            the final generated token. Decoder side: a tuple such as ``("mean", "last")`` pools the same activations
            both ways in one pass; the features are then ``(n_clips, n_pools, n_points, d)``.
        side: ``"encoder"`` (only the encoder runs) or ``"decoder"`` (teacher-forced on the greedy hypothesis).
        batch_size: clips per forward pass (does not change the results, up to float rounding).
        shard_size: clips per shard file; part of the configuration.
        max_new_tokens: (decoder) most tokens generated per clip.
        n_clips: the number of clips, when ``clips`` is a function.
        clip_ids: one identifier per clip (e.g. paths), hashed into the configuration; defaults to the items of a
            :class:`LazyClips` or the samples of a list of arrays.
        progress: show a tqdm bar.
        process_index, num_processes: this process computes shards ``process_index, process_index +
            num_processes, ...`` only.
        attention: the attention backend during the extraction (:func:`~asrinterp_utils.models.attention_backend`;
            the model's own is restored afterwards). ``"sdpa"`` (default) gives the features of ``"eager"`` up to
            float rounding, 2-3x faster on a CPU; None keeps the model's backend. Not part of the configuration.
        spans: (encoder side) one ``(start_s, end_s)`` per clip, e.g. a word's timestamps: only the frames of that
            span are pooled (:func:`pool_batch`); part of the configuration.

    Returns:
        With one process, the :class:`FeatureStore` (``store.load()``: ``(n_clips, n_points, d)`` float32). With
        several, None: call :func:`merge_manifests` once every process has finished (see
        :func:`run_with_accelerate`).
    """
    pools = _check_pooling(side, pool)
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size), ("max_new_tokens", max_new_tokens),
                        ("num_processes", num_processes)):
        check_whole(value, name, 1)
    if isinstance(process_index, bool) or not isinstance(process_index, int) or not 0 <= process_index < num_processes:
        raise ValueError(f"process_index must be in 0..{num_processes - 1}, got {process_index!r}")
    points = _check_points(lm, names, side)
    n, get_clip = _clip_getter(clips, n_clips)
    if n == 0:
        raise ValueError("clips is empty.")
    spans = _check_spans(spans, n, side)

    config = {"format": FORMAT, "side": side, "pool": pool if isinstance(pool, str) else list(pools),
              "names": points, "shard_size": int(shard_size), **({"spans": spans} if spans is not None else {}),
              "n_clips": n, "max_new_tokens": int(max_new_tokens) if side == "decoder" else None,
              "clips": _clips_fingerprint(clips, n, clip_ids), **_model_fingerprint(lm)}
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {str(out_dir)!r} is a file; give a folder (new, or one this extraction made)")
    config_hash = _claim_folder(out_dir, config)

    mine = plan_shards(n, shard_size)[process_index::num_processes]
    desc = f"{side} features" + (f" [process {process_index}/{num_processes}]" if num_processes > 1 else "")
    backend = attention_backend(lm, attention) if attention else contextlib.nullcontext()
    with tqdm(total=sum(len(s) for s in mine), desc=desc, unit="clip", disable=not progress) as bar, backend:
        for shard in mine:
            _remove_temp_files(out_dir, shard)
            if _shard_is_done(out_dir, shard, config_hash):  # finished by an earlier run
                bar.update(len(shard))
                continue
            features, n_positions, token_ids = [], [], []
            for start in range(shard.start, shard.stop, batch_size):
                audio = [get_clip(i) for i in range(start, min(start + batch_size, shard.stop))]
                stop = min(start + batch_size, shard.stop)
                pooled, n_pos, new_ids = _pool_batch(lm, audio, points, side=side, pool=pool,
                                                     max_new_tokens=max_new_tokens,
                                                     spans=None if spans is None else spans[start:stop])
                del audio  # before the next batch is loaded: one batch of audio at a time
                features.append(pooled.numpy())
                n_positions.append(n_pos.cpu().numpy())
                if new_ids is not None:
                    token_ids.append(_padded_tokens(new_ids, n_pos, max_new_tokens))
                bar.update(len(pooled))
            _write_shard(out_dir, shard, np.concatenate(features), np.concatenate(n_positions), config_hash,
                         np.concatenate(token_ids) if token_ids else None)
    if num_processes == 1:
        return merge_manifests(out_dir)
    return None


def merge_manifests(out_dir: PathLike) -> "FeatureStore":
    """Check that every shard of ``out_dir`` is there (written by any process) and write ``manifest.json``.

    Call it once all processes have finished (on process 0 after a barrier, or afterwards). Raises
    ``FileNotFoundError`` naming the missing shards otherwise.
    """
    out_dir = Path(out_dir)
    info = _read_config(out_dir)
    config, config_hash = info["config"], info["hash"]
    shards = plan_shards(config["n_clips"], config["shard_size"])
    missing = [s.index for s in shards if not _shard_is_done(out_dir, s, config_hash)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(shards)} shards are missing in {out_dir} (shard numbers {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}): run extract_features again (with num_processes=n, shard i "
            "belongs to process i % n), then merge.")
    from safetensors import safe_open

    with safe_open(str(out_dir / shards[0].file), framework="numpy") as f:
        width = list(f.get_slice("features").get_shape()[1:])
    manifest = {"format": FORMAT, "hash": config_hash, "model": config["model"], "side": config["side"],
                "pool": config["pool"], "names": config["names"], "n_clips": config["n_clips"],
                "shape": [config["n_clips"], *width],
                "shards": [{"file": s.file, "start": s.start, "stop": s.stop} for s in shards],
                "config": config}
    write_text_atomic(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=1))
    return FeatureStore.open(out_dir)


@dataclass(frozen=True)
class FeatureStore:
    """A finished extraction folder. ``load()`` gives ``(n_clips, n_points, d)`` float32 in clip order; point ``j``
    is ``names[j]``."""

    out_dir: Path
    names: tuple[str, ...]
    pool: Union[str, tuple[str, ...]]
    side: str
    model: str
    n_clips: int
    shape: tuple[int, ...]
    shards: tuple[Shard, ...]
    config: dict = field(repr=False)

    @classmethod
    def open(cls, out_dir: PathLike) -> "FeatureStore":
        """Open a folder by its manifest; without one (a multi-process run not merged yet), merge first."""
        out_dir = Path(out_dir)
        path = out_dir / MANIFEST_FILE
        if not path.is_file():
            return merge_manifests(out_dir)
        m = json.loads(path.read_text())
        if m.get("format") != FORMAT:
            raise ValueError(f"{out_dir} has folder format {m.get('format')}; this version reads {FORMAT}.")
        pool = m["pool"] if isinstance(m["pool"], str) else tuple(m["pool"])
        return cls(out_dir=out_dir, names=tuple(m["names"]), pool=pool, side=m["side"], model=m["model"],
                   n_clips=int(m["n_clips"]), shape=tuple(m["shape"]),
                   shards=tuple(Shard(i, s["start"], s["stop"]) for i, s in enumerate(m["shards"])),
                   config=m["config"])

    def iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per shard: ``clip_index (n,)``, ``features (n, n_points, d)`` and ``n_positions (n,)``; one shard in
        memory at a time."""
        for t in self._shard_tensors():
            yield t["clip_index"], t["features"], t["n_positions"]

    def _shard_tensors(self) -> Iterator[dict]:
        """Every tensor of each shard file, one shard at a time."""
        from safetensors.numpy import load_file

        for shard in self.shards:
            yield load_file(str(self.out_dir / shard.file))

    def load(self) -> np.ndarray:
        """Every clip's features, ``(n_clips, n_points, d)`` float32, in clip order."""
        out = np.empty(self.shape, dtype=np.float32)
        for clip_index, features, _ in self.iter_shards():
            out[clip_index] = features
        return out

    def n_positions(self) -> np.ndarray:
        """``(n_clips,)``: how many encoder frames or generated tokens each clip's vector pools."""
        out = np.empty(self.n_clips, dtype=np.int64)
        for clip_index, _, n_positions in self.iter_shards():
            out[clip_index] = n_positions
        return out

    def token_ids(self) -> list[list[int]]:
        """(Decoder side) each clip's generated tokens, ``<|endoftext|>`` included where the model emitted it: the
        hypothesis the features were teacher-forced on. ``tokenizer.decode(ids, skip_special_tokens=True)`` gives
        its text."""
        if self.side != "decoder":
            raise ValueError("token_ids exist only for side='decoder' folders (the encoder side generates nothing).")
        out: list[list[int]] = [[] for _ in range(self.n_clips)]
        for t in self._shard_tensors():
            for i, row in zip(t["clip_index"].tolist(), t["token_ids"].tolist()):
                out[i] = [x for x in row if x >= 0]
        return out


# ---------------------------------------------------------------------------------------------------------------
# The features of a dataset table, cached
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TableFeatures:
    """What :func:`table_features` returns, row-aligned with the table it was given.

    Attributes:
        features: ``(n_rows, n_points, d)`` float32; point ``j`` is ``names[j]``. With several pools,
            ``(n_rows, n_pools, n_points, d)``, pool ``k`` being ``pools[k]``.
        n_positions: ``(n_rows,)`` encoder frames or generated tokens pooled per row.
        names: the hook points, in order.
        pools: the pools, in order.
        transcripts: (decoder side) each row's greedy hypothesis, the text the decoder was teacher-forced on;
            None on the encoder side.
        store: the :class:`FeatureStore` behind it (one entry per distinct ``path``).
    """
    features: np.ndarray = field(repr=False)
    n_positions: np.ndarray = field(repr=False)
    names: tuple[str, ...]
    pools: tuple[str, ...]
    transcripts: Union[list[str], None] = field(repr=False)
    store: "FeatureStore" = field(repr=False)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in text).strip("-")


def table_features(lm: Any, table: Any, names: Any, *, side: str = "encoder",
                   pool: Union[str, Sequence[str]] = "mean",
                   batch_size: int = 8, max_new_tokens: int = 128, shard_size: int = 64,
                   out_dir: Union[PathLike, None] = None, progress: bool = True,
                   attention: Union[str, None] = "sdpa") -> TableFeatures:
    """Pooled features for every row of a speech-bank table (a ``path`` column of 16 kHz wavs), cached on disk.

    Each distinct ``path`` is extracted once by :func:`extract_features` (rows that share a clip share its
    vector), into ``out_dir`` or, by default, a folder under ``cache_dir("features", <model>)`` named by a hash of
    the model, hook points, side, pool and the list of paths: a second call with the same arguments reads the
    folder, and an interrupted one resumes.

    >>> gender = speech_dataset("gender")                                      # doctest: +SKIP
    >>> tf = table_features(lm, gender, "enc.*.resid_post")                    # doctest: +SKIP
    >>> tf.features.shape                                # (n_rows, n_layers, d_model)     # doctest: +SKIP

    Arguments are those of :func:`extract_features`. Returns a :class:`TableFeatures`.
    """
    from .data import clip_audio
    from .runtime import cache_dir

    if "path" not in getattr(table, "columns", ()):
        raise ValueError("table must be a DataFrame with a 'path' column (a speech-bank table such as "
                         "speech_dataset('gender')).")
    if len(table) == 0:
        raise ValueError("table has no rows.")
    points = _check_points(lm, names, side)
    paths = [str(p) for p in table["path"]]
    unique = list(dict.fromkeys(paths))
    if out_dir is None:
        key = {"model": _model_fingerprint(lm), "names": points, "side": side, "pool": list(_pools(pool)),
               "max_new_tokens": max_new_tokens if side == "decoder" else None, "shard_size": shard_size,
               "paths": unique, "format": FORMAT}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        out_dir = (cache_dir("features", _slug(str(getattr(lm, "name", "model"))))
                   / f"{side}-{'+'.join(_pools(pool))}-{digest}")
    store = extract_features(lm, LazyClips(unique, clip_audio), points, out_dir=out_dir, pool=pool, side=side,
                             batch_size=batch_size, shard_size=shard_size, max_new_tokens=max_new_tokens,
                             progress=progress, attention=attention)
    row_of = {p: i for i, p in enumerate(unique)}
    rows = np.array([row_of[p] for p in paths])
    transcripts = None
    if side == "decoder":
        texts = [run.text_of(lm.tokenizer, ids) for ids in store.token_ids()]
        transcripts = [texts[i] for i in rows]
    return TableFeatures(features=store.load()[rows], n_positions=store.n_positions()[rows], names=tuple(points),
                         pools=_pools(pool), transcripts=transcripts, store=store)


def log_mel_features(lm: Any, clips: Any, *, batch_size: int = 32) -> np.ndarray:
    """The log-mel baseline for probes: per clip, the mean and the standard deviation of each mel bin over the
    clip's real frames (not the padding to 30 s), ``(n_clips, 1, 2 * n_mels)`` float32 (one "layer").

    ``clips``: a sequence of 16 kHz clips, or a table with a ``path`` column. What a probe reads from this is
    available before any layer of the model: the model's layers are interesting where they beat it.
    """
    if hasattr(clips, "columns"):
        from .data import clip_audio

        clips = LazyClips([str(p) for p in clips["path"]], clip_audio)
    check_whole(batch_size, "batch_size", 1)
    n, get_clip = _clip_getter(clips, None)
    out = np.empty((n, 1, 2 * lm.dims.n_mels), dtype=np.float32)
    for start in range(0, n, batch_size):
        batch = [get_clip(i) for i in range(start, min(start + batch_size, n))]
        mel, n_frames = lm.features(batch)  # (batch, n_mels, 3000), (batch,) encoder frames = 2 mel frames each
        for row, (m, f) in enumerate(zip(mel.float().cpu(), n_frames.tolist())):
            real = m[:, :2 * f]
            out[start + row, 0] = torch.cat([real.mean(dim=1), real.std(dim=1, unbiased=False)]).numpy()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Several processes with Hugging Face Accelerate
# ---------------------------------------------------------------------------------------------------------------


def accelerate_state() -> Any:
    """``accelerate.PartialState`` for this process: several processes under a distributed launcher, on their GPUs,
    or on the CPU where there is no GPU or the launcher says ``--cpu``. Create it through this function before any
    other ``PartialState()`` (the state is created once per process): a plain ``PartialState()`` on a machine
    without GPUs ignores the launcher's other processes."""
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def run_with_accelerate(lm: Any, clips: Any, names: Any, *, out_dir: PathLike, **kwargs: Any) -> FeatureStore:
    """:func:`extract_features` in every process of a distributed launch (or alone, as one process).

    Each process takes its index and count from ``accelerate.PartialState()``, moves the model to its device
    (``state.device``: its own GPU, or the CPU), writes its shards, waits for the others, and process 0 writes the
    manifest. Every process returns the finished :class:`FeatureStore`. ``kwargs`` are those of
    :func:`extract_features` (not ``process_index`` / ``num_processes``).

    Launchers (Accelerate 1.15): ``accelerate launch --num_processes N script.py`` on a machine with N GPUs;
    ``torchrun --nproc_per_node N script.py`` or ``accelerate launch --multi_gpu --num_processes N script.py`` for
    N CPU processes on a machine without GPUs. ``accelerate launch --cpu --num_processes N`` starts a single
    process unless it is given an MPI hostfile (``--mpirun_hostfile``): that process then computes every shard,
    with a warning.
    """
    state = accelerate_state()
    if state.num_processes == 1 and state.device.type == "cpu" and "MASTER_ADDR" in os.environ and \
            os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
        warnings.warn("accelerate launch --cpu started one process (several CPU processes need --mpirun_hostfile): "
                      "this process computes every shard. For several CPU processes use torchrun --nproc_per_node N "
                      "or accelerate launch --multi_gpu --num_processes N.", RuntimeWarning, stacklevel=2)
    if lm.device != state.device:
        lm.model.to(state.device)
    extract_features(lm, clips, names, out_dir=out_dir, process_index=state.process_index,
                     num_processes=state.num_processes, **kwargs)
    state.wait_for_everyone()
    if state.is_main_process:
        merge_manifests(out_dir)
    state.wait_for_everyone()
    return FeatureStore.open(out_dir)
