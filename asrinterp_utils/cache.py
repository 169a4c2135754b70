"""Caching activations: a filtered set of hook points, full or pooled over the clip's real frames, in memory
(moved to CPU by default) or streamed to disk.

>>> with cache_activations(lm, "enc.*.resid_post", pool="mean", n_frames=batch.n_frames) as cache:
...     lm.model(input_features, decoder_input_ids=ids)
>>> cache.stack("enc.*.resid_post").shape   # (layers, batch, d_model)

Full activations keep the point's layout, ``(batch, positions, ...)``; during ``generate`` the decoder's one-token
steps are stitched back along the position axis. One block records **one pass** per point: a decoder call that
continues the previous one (the next positions, the same rows) extends it; a second encoder pass, or a decoder
pass that starts again from an earlier position or has other rows, raises :class:`CachePassError` (cache each
pass in a block of its own, or batch the clips into one call), because stitching two passes along positions or
averaging them into one pool would be a silently wrong answer.

Pooled activations drop the position axis: ``(batch, ...)``, averaged (or maxed) over positions below
``n_frames`` (encoder) or ``n_tokens`` (decoder) for each clip (one entry per clip of the batch, checked), on the
fly, so caching every layer of a large model costs a few vectors per clip. Whisper pads every clip to 1,500
encoder frames; pooling over all of them would mostly average padding, so pass ``n_frames``.

With ``to_disk=folder`` each full activation is written to a safetensors file as soon as it is computed (written
to a temporary name, then renamed), and read back lazily; ``manifest.json`` is written last, so a folder without
it is an interrupted run and :meth:`ActivationCache.load` refuses it.
"""
from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Union

import torch

from .hooks import HookContext, HookPoint, HookSession, resolve_hook_points
from .runtime import atomic_path, write_text_atomic

POOLS = (None, "mean", "max")


class ActivationCache(Mapping):
    """Activations by hook-point name. ``cache[name]`` is a tensor (see the module docstring for layouts).

    ``pooled`` is None, ``"mean"`` or ``"max"``. Iterating gives names in forward order.
    """

    def __init__(self, data: dict[str, Union[torch.Tensor, Callable[[], torch.Tensor]]] | None = None,
                 pooled: str | None = None, meta: dict | None = None) -> None:
        self._data = dict(data or {})
        self.pooled = pooled
        self.meta = dict(meta or {})

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            value = self._data[name]
        except KeyError:
            import difflib
            near = difflib.get_close_matches(name, list(self._data), n=3, cutoff=0.5)
            hint = f" Nearest cached: {near}." if near else ""
            raise KeyError(f"{name!r} is not in this cache.{hint} Cached: {len(self._data)} points; "
                           "cache it by naming it (or a pattern matching it) in cache_activations.") from None
        if callable(value):  # lazily loaded from disk
            value = value()
            self._data[name] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        kind = f"pooled={self.pooled!r}" if self.pooled else "full"
        return f"ActivationCache({len(self)} points, {kind})"

    def select(self, pattern: str) -> list[str]:
        """Cached names matching a wildcard pattern, in forward order."""
        return [n for n in self._data if fnmatch.fnmatchcase(n, pattern)]

    def stack(self, pattern: str) -> torch.Tensor:
        """Stack the cached points matching ``pattern`` (e.g. ``"enc.*.resid_post"``), in layer order, into
        ``(n_points, ...)``."""
        names = self.select(pattern)
        if not names:
            raise KeyError(f"no cached point matches {pattern!r}")
        return torch.stack([self[n] for n in names])

    def interpolate(self, other: "ActivationCache", step: float, pattern: str = "*") -> "ActivationCache":
        """``self + step * (other - self)`` for every point matching ``pattern``: a cache a fraction ``step`` of the
        way from this run to ``other`` (0 gives this run, 1 gives ``other``), e.g. a small step toward a noise run
        to check a linear estimate where it must hold. Both caches must hold the points with the same shapes."""
        names = self.select(pattern)
        if not names:
            raise KeyError(f"interpolate: no cached point matches {pattern!r}")
        for name in names:
            if name not in other or other[name].shape != self[name].shape:
                seen = tuple(other[name].shape) if name in other else "missing"
                raise ValueError(f"interpolate: {name} is {tuple(self[name].shape)} here and {seen} in the other "
                                 "cache; cache both runs with the same points and inputs")
        return ActivationCache({n: self[n] + step * (other[n] - self[n]) for n in names}, pooled=self.pooled,
                               meta=self.meta)

    def rows(self, rows: Sequence[int]) -> "ActivationCache":
        """A cache of the clips ``rows`` only (every layout has the batch first): e.g. the first clips of a run,
        to patch a smaller batch of those clips from it."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        sizes = {self[n].shape[0] for n in self}
        if index.numel() == 0 or (sizes and (int(index.min()) < 0 or int(index.max()) >= min(sizes))):
            raise ValueError(f"rows: give row indices in 0..{min(sizes, default=0) - 1} (the cache holds "
                             f"{min(sizes, default=0)} clips); got {list(rows)[:8]}")
        return ActivationCache({n: self[n][index.to(self[n].device)] for n in self}, pooled=self.pooled,
                               meta=self.meta)

    def to(self, device: Union[str, torch.device]) -> "ActivationCache":
        """A copy with every tensor on ``device``."""
        return ActivationCache({n: self[n].to(device) for n in self}, pooled=self.pooled, meta=self.meta)

    # -- disk --
    def save(self, folder: Union[str, Path]) -> Path:
        """Write every tensor (one safetensors file per point) and the manifest, atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for i, name in enumerate(self):
            fname = f"{i:04d}_{_safe(name)}.safetensors"
            _atomic_save({"act": self[name].contiguous()}, folder / fname)
            files[name] = [fname]
        _write_manifest(folder, files, self.pooled, self.meta)
        return folder

    @classmethod
    def load(cls, folder: Union[str, Path]) -> "ActivationCache":
        """Open a cache folder written by :meth:`save` or by ``cache_activations(..., to_disk=folder)``; tensors are
        read when first used."""
        folder = Path(folder)
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{folder} has no manifest.json: the run that wrote it did not finish. Delete the folder and run "
                "again.")
        info = json.loads(manifest.read_text())
        data = {name: (lambda files=files, kind=info["kinds"].get(name, "full"): _read_chunks(folder, files, kind))
                for name, files in info["files"].items()}
        return cls(data, pooled=info.get("pooled"), meta=info.get("meta", {}))


class CachePassError(RuntimeError):
    """A cache block saw a second forward pass at a hook point (see the module docstring)."""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def _write_manifest(folder: Path, files: dict, pooled: str | None, meta: dict, kinds: dict | None = None) -> None:
    write_text_atomic(folder / "manifest.json",
                      json.dumps({"files": files, "pooled": pooled, "meta": meta, "kinds": kinds or {}}, indent=1))


def _read_chunks(folder: Path, files: Sequence[str], kind: str) -> torch.Tensor:
    from safetensors.torch import load_file

    chunks = [load_file(str(folder / f))["act"] for f in files]
    return _stitch(chunks, kind)


def _stitch(chunks: list[torch.Tensor], kind: str) -> torch.Tensor:
    """Concatenate per-call chunks along the position axis; attention patterns are padded on the key axis (later
    decoder steps attend to more keys)."""
    if len(chunks) == 1:
        return chunks[0]
    if kind == "pattern":
        n_keys = max(c.shape[-1] for c in chunks)
        chunks = [torch.nn.functional.pad(c, (0, n_keys - c.shape[-1])) for c in chunks]
        return torch.cat(chunks, dim=2)
    return torch.cat(chunks, dim=1)


class _Collector:
    """Receives every call of one hook point and keeps chunks, a running pool, or writes to disk."""

    def __init__(self, point: HookPoint, pool: str | None, lengths: torch.Tensor | None, device, dtype,
                 disk: Path | None, index: int, starts: torch.Tensor | None = None) -> None:
        if pool is not None and point.is_pattern:
            raise ValueError(f"{point.name}: attention patterns cannot be pooled; cache them with pool=None.")
        self.point, self.pool, self.lengths, self.starts = point, pool, lengths, starts
        self.device, self.dtype, self.disk, self.index = device, dtype, disk, index
        self.chunks: list = []
        self.total: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.rows: int | None = None  # the pass's batch rows, and the position its next call must start at
        self.next_position: int | None = None

    @property
    def kind(self) -> str:
        return "pattern" if self.point.is_pattern else "full"

    def _check_one_pass(self, act: torch.Tensor, ctx: HookContext) -> None:
        """Refuse a call that is not the continuation of this point's pass."""
        rows, start = int(act.shape[0]), int(ctx.positions[0]) if len(ctx.positions) else 0
        for name, given in (("n_frames" if self.point.side == "enc" else "n_tokens", self.lengths),
                            ("first_frames", self.starts)):
            if given is not None and len(given) != rows:
                raise ValueError(f"{self.point.name}: {name} has {len(given)} entries but the forward pass has {rows} "
                                 f"rows (clips); give one {name} entry per clip of the batch")
        if self.point.side == "enc" and self.lengths is not None and int(self.lengths.max()) > act.shape[1]:
            raise ValueError(f"{self.point.name}: n_frames {self.lengths.tolist()[:8]} exceed the {act.shape[1]} "
                             "frames of the pass; give each clip's real frames (lm.features(clips) returns them)")
        if self.rows is not None:
            if self.point.side == "enc":
                why = "a second encoder pass"
            elif start != self.next_position:
                why = (f"a second decoder pass (it starts at position {start}; the pass so far ends before "
                       f"position {self.next_position})")
            elif rows != self.rows:
                why = f"a decoder call with {rows} rows after {self.rows}"
            else:
                why = None
            if why is not None:
                raise CachePassError(
                    f"{self.point.name}: {why} inside one cache_activations block. A block records one pass per hook "
                    "point: cache each pass in a block of its own, or run the clips as one batch.")
        self.rows = rows
        self.next_position = start + int(len(ctx.positions))

    def __call__(self, act: torch.Tensor, ctx: HookContext) -> None:
        self._check_one_pass(act, ctx)
        act = act.detach()
        if self.pool is None:
            act = act.to(device=self.device, dtype=self.dtype or act.dtype)
            if self.disk is not None:
                fname = f"{self.index:04d}_{_safe(self.point.name)}.{len(self.chunks):05d}.safetensors"
                _atomic_save({"act": act}, self.disk / fname)
                self.chunks.append(fname)
            else:
                self.chunks.append(act)
            return
        # pooled on the fly over valid positions: (batch, pos, ...) -> running (batch, ...)
        pos = ctx.positions.to(act.device)
        if self.lengths is not None:
            valid = pos[None, :] < self.lengths.to(act.device)[:, None]  # (batch, pos)
        else:
            valid = torch.ones(act.shape[0], act.shape[1], dtype=torch.bool, device=act.device)
        if self.starts is not None:
            valid = valid & (pos[None, :] >= self.starts.to(act.device)[:, None])
        shape = valid.shape + (1,) * (act.dim() - 2)
        v = valid.view(shape)
        x = act.float()
        if self.pool == "mean":
            part = (x * v).sum(dim=1)
            cnt = valid.sum(dim=1).float()
            self.total = part if self.total is None else self.total + part
            self.count = cnt if self.count is None else self.count + cnt
        else:
            part = x.masked_fill(~v, float("-inf")).amax(dim=1)
            self.total = part if self.total is None else torch.maximum(self.total, part)

    def result(self) -> Union[torch.Tensor, list[str]]:
        if self.pool is None:
            if self.disk is not None:
                return self.chunks
            return _stitch(self.chunks, self.kind) if self.chunks else None
        if self.total is None:
            return None
        if self.pool == "mean":
            count = self.count.clamp(min=1).view(-1, *([1] * (self.total.dim() - 1)))
            out = self.total / count
        else:
            out = self.total
        return out.to(device=self.device, dtype=self.dtype or torch.float32)


@contextmanager
def cache_activations(model: Any, names: Union[str, Sequence[str], Callable[[str], bool]] = "*", *,
                      pool: str | None = None, n_frames: Any = None, n_tokens: Any = None,
                      device: Union[str, torch.device, None] = "cpu", dtype: torch.dtype | None = None,
                      to_disk: Union[str, Path, None] = None, first_frames: Any = None) -> Iterator[ActivationCache]:
    """Record the activations at ``names`` during every forward (or ``generate``) inside the ``with`` block.

    Args:
        model: a :class:`~asrinterp_utils.models.LoadedModel` or Hugging Face Whisper model.
        names: hook-point names, wildcard patterns (``"dec.*.resid_post"``) or a predicate on names.
        pool: None (keep positions), ``"mean"`` or ``"max"`` over valid positions, on the fly.
        n_frames: ``(batch,)`` real encoder frames per clip (``AudioBatch.n_frames``); pooling ignores the rest.
        n_tokens: ``(batch,)`` real decoder tokens per sequence; pooling ignores positions from there on.
        first_frames: ``(batch,)`` encoder frame at which each clip's pooled span starts (default 0): with
            ``n_frames`` as the span's end, pooling covers frames ``first_frames[i] .. n_frames[i] - 1``, e.g. one
            word's frames from its timestamps (20 ms a frame).
        device: where to keep the activations (default CPU, so GPU memory is not held); None keeps them where
            they were computed.
        dtype: cast to this dtype (e.g. ``torch.float16`` to halve memory).
        to_disk: a folder: write each full activation to disk as it is computed (memory stays flat).

    The returned cache is filled when the block exits.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    points = resolve_hook_points(model, names)
    disk = Path(to_disk) if to_disk is not None else None
    if disk is not None:
        disk.mkdir(parents=True, exist_ok=True)
        (disk / "manifest.json").unlink(missing_ok=True)
    lengths = {"enc": _as_lengths(n_frames, "n_frames", 1), "dec": _as_lengths(n_tokens, "n_tokens", 1)}
    starts = {"enc": _as_lengths(first_frames, "first_frames", 0), "dec": None}
    collectors = [_Collector(p, pool, lengths[p.side], device, dtype, disk, i, starts[p.side])
                  for i, p in enumerate(points)]
    cache = ActivationCache(pooled=pool)
    with HookSession(model) as session:
        for c in collectors:
            session.add_reader(c.point, c)
        yield cache
    results = {c.point.name: c.result() for c in collectors}
    results = {k: v for k, v in results.items() if v is not None and (not isinstance(v, list) or v)}
    if disk is not None and pool is None:
        kinds = {c.point.name: c.kind for c in collectors}
        _write_manifest(disk, results, None, {}, kinds)
        loaded = ActivationCache.load(disk)
        cache._data.update(loaded._data)
    else:
        cache._data.update(results)
        if disk is not None:
            cache.save(disk)


def _as_lengths(x: Any, what: str, minimum: int) -> torch.Tensor | None:
    """``x`` as ``(batch,)`` integer counts, each at least ``minimum`` (a float that is not a whole number would be
    read as a bound between two positions; a count of 0 would pool nothing)."""
    if x is None:
        return None
    t = torch.as_tensor(x).flatten()
    if t.dtype.is_floating_point and not bool((t == t.round()).all()):
        raise ValueError(f"{what} must be whole numbers of positions per clip; got {t.tolist()[:8]}")
    t = t.long()
    if t.numel() and int(t.min()) < minimum:
        raise ValueError(f"{what} must be at least {minimum} for every clip; got {t.tolist()[:8]}")
    return t
