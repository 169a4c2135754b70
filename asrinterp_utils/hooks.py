"""Hook points: one naming grammar over the Hugging Face Whisper modules, and the machinery that reads and writes
activations at those points.

The grammar
-----------
Every hook point has a name ``{side}.{layer}.{point}`` (layers count from 0) or ``{side}.final``::

    enc.{L}.resid_pre        (batch, frames, d_model)   input of encoder block L
    enc.{L}.attn_out         (batch, frames, d_model)   self-attention output (after out_proj), before the residual add
    enc.{L}.resid_post_attn  (batch, frames, d_model)   residual stream between attention and MLP
    enc.{L}.mlp_hidden       (batch, frames, d_mlp)     MLP neurons after the GELU (input of fc2)
    enc.{L}.mlp_out          (batch, frames, d_model)   MLP output, before the residual add
    enc.{L}.resid_post       (batch, frames, d_model)   output of encoder block L
    enc.{L}.attn_pattern     (batch, heads, frames, frames)   attention probabilities (read-only; eager attention)
    enc.{L}.head_out         (batch, frames, heads, d_head)   per-head attention context, the slices entering out_proj
    enc.final                (batch, frames, d_model)   after the final encoder LayerNorm: what the decoder reads

    dec.{L}.resid_pre        (batch, tokens, d_model)   input of decoder block L
    dec.{L}.self_attn_out    (batch, tokens, d_model)   causal self-attention output
    dec.{L}.resid_post_self  (batch, tokens, d_model)   residual stream after self-attention
    dec.{L}.cross_attn_out   (batch, tokens, d_model)   cross-attention (encoder-decoder) output
    dec.{L}.resid_post_cross (batch, tokens, d_model)   residual stream after cross-attention, before the MLP
    dec.{L}.mlp_hidden       (batch, tokens, d_mlp)
    dec.{L}.mlp_out          (batch, tokens, d_model)
    dec.{L}.resid_post       (batch, tokens, d_model)   output of decoder block L
    dec.{L}.self_pattern     (batch, heads, tokens, tokens)   (read-only)
    dec.{L}.cross_pattern    (batch, heads, tokens, frames)   (read-only)
    dec.{L}.self_head_out    (batch, tokens, heads, d_head)
    dec.{L}.cross_head_out   (batch, tokens, heads, d_head)
    dec.final                (batch, tokens, d_model)   after the final decoder LayerNorm; logits = dec.final @ W_E.T

Examples: ``"enc.3.resid_post"``, ``"dec.1.cross_head_out"``, ``"dec.final"``. Wildcards (``fnmatch``) select
several: ``"dec.*.cross_attn_out"``, ``"enc.*.resid_post"``, ``"*.0.*"``. An unknown name raises
:class:`HookPointError` with the nearest valid names.

How it maps to Hugging Face
---------------------------
``resid_pre`` is the input of ``layers[L]`` and ``resid_post`` its output; ``*_attn_out`` is the first output of the
attention module; ``*_head_out`` is the input of its ``out_proj`` viewed as ``(..., heads, d_head)``; ``mlp_hidden``
the input of ``fc2`` and ``mlp_out`` its output; the mid-block residuals are the inputs of the LayerNorm that
follows (writing them changes the attention output so that the sum equals the new value). Patterns are the second
output of the attention module, which only eager attention computes: ``load_model`` loads SDPA (PyTorch's fused
attention, several times faster on the encoder's 1500 frames), and while a hook reads a pattern the model runs
eager attention, its own setting restored when the last such hook is removed.

Positions
---------
Positions are absolute: encoder frames 0..1499, decoder tokens from 0 (the first prompt token). During
``generate`` with the KV cache the decoder runs one token per step; every hook is told which absolute positions the
current call covers, so caches are stitched back to ``(batch, tokens, ...)`` and patches select positions by their
absolute index. A decoder patch applied at position p changes the keys and values that the KV cache stores for p,
so later steps see the patched history: exactly what a teacher-forced forward over the same tokens with the same
patch computes (a test proves it). Encoder patches apply once, before the cross-attention keys and values are
computed from the encoder output. Caching during generation supports greedy decoding (one beam).

Order of interventions
----------------------
Interventions apply in the order written: a list on one point in its order, the entries of one ``patch`` dict in
the dict's order (two keys that name the same point included), and nested ``patch`` blocks outer first, then inner.
So ``with patch(lm, {p: zero()}): with patch(lm, {p: add(v)}): ...`` reads ``v`` at ``p``, and the other nesting
reads 0. ``tests/test_intervention_laws.py`` property-tests these laws (identity, composition, restriction).

Hooks are attached by :class:`HookSession` (used by :func:`asrinterp_utils.cache.cache_activations` and
:func:`patch`) and always removed when the ``with`` block exits, exceptions included. Patches run before caches
on the same module, so a cache inside or outside a patch records the patched values.
"""
from __future__ import annotations

import difflib
import fnmatch
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

ENCODER_POINTS = ("resid_pre", "attn_out", "resid_post_attn", "mlp_hidden", "mlp_out", "resid_post",
                  "attn_pattern", "head_out")
DECODER_POINTS = ("resid_pre", "self_attn_out", "resid_post_self", "cross_attn_out", "resid_post_cross",
                  "mlp_hidden", "mlp_out", "resid_post", "self_pattern", "cross_pattern", "self_head_out",
                  "cross_head_out")
PATTERN_POINTS = ("attn_pattern", "self_pattern", "cross_pattern")
HEAD_POINTS = ("head_out", "self_head_out", "cross_head_out")

_NAME_RE = re.compile(r"^(enc|dec)\.(?:(\d+)\.([a-z_]+)|(final))$")


class HookPointError(KeyError):
    """An unknown or out-of-range hook-point name, or an operation a point does not support."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class HookPoint:
    """One named place in the model where an activation can be read or written.

    ``layer`` is None for ``enc.final`` / ``dec.final``. ``is_pattern``: attention probabilities
    ``(batch, heads, query, key)``, read-only. ``is_heads``: per-head context ``(batch, pos, heads, d_head)``.
    """

    name: str
    side: str
    layer: int | None
    point: str

    @property
    def is_pattern(self) -> bool:
        return self.point in PATTERN_POINTS

    @property
    def is_heads(self) -> bool:
        return self.point in HEAD_POINTS

    @property
    def shape_doc(self) -> str:
        pos = "frames" if self.side == "enc" else "tokens"
        if self.is_pattern:
            key = "frames" if self.point == "cross_pattern" or self.side == "enc" else "tokens"
            return f"(batch, heads, {pos}, {key})"
        if self.is_heads:
            return f"(batch, {pos}, heads, d_head)"
        if self.point == "mlp_hidden":
            return f"(batch, {pos}, d_mlp)"
        return f"(batch, {pos}, d_model)"


def whisper_core(model: Any) -> nn.Module:
    """The Hugging Face ``WhisperModel`` (with ``.encoder`` and ``.decoder``) inside a :class:`LoadedModel`, a
    ``WhisperForConditionalGeneration`` or a ``WhisperModel``."""
    m = getattr(model, "model", model)  # LoadedModel.model -> WhisperForConditionalGeneration
    m = getattr(m, "model", m)  # WhisperForConditionalGeneration.model -> WhisperModel
    if not (hasattr(m, "encoder") and hasattr(m, "decoder")):
        raise TypeError(f"expected a Whisper model (LoadedModel or Hugging Face Whisper), got {type(model).__name__}")
    return m


def hf_model(model: Any) -> nn.Module:
    """The Hugging Face ``WhisperForConditionalGeneration`` (with ``proj_out``) of a :class:`LoadedModel`, or the
    model itself."""
    return model if hasattr(model, "proj_out") else getattr(model, "model", model)


def all_hook_points(model: Any) -> list[HookPoint]:
    """Every hook point of ``model``, encoder first, in forward order within a layer."""
    core = whisper_core(model)
    points = []
    for side, layers, names in (("enc", core.encoder.layers, ENCODER_POINTS),
                                ("dec", core.decoder.layers, DECODER_POINTS)):
        for i in range(len(layers)):
            points += [HookPoint(f"{side}.{i}.{p}", side, i, p) for p in names]
        points.append(HookPoint(f"{side}.final", side, None, "final"))
    return points


def parse_hook_point(model: Any, name: str) -> HookPoint:
    """One exact name to its :class:`HookPoint`; raises :class:`HookPointError` with suggestions otherwise."""
    core = whisper_core(model)
    match = _NAME_RE.match(name.strip()) if isinstance(name, str) else None
    if match:
        side, layer, point, final = match.groups()
        if final:
            return HookPoint(name, side, None, "final")
        n_layers = len(core.encoder.layers if side == "enc" else core.decoder.layers)
        valid = ENCODER_POINTS if side == "enc" else DECODER_POINTS
        if point in valid and not 0 <= int(layer) < n_layers:
            side_name = "encoder" if side == "enc" else "decoder"
            raise HookPointError(
                f"{name!r}: layer {layer} is out of range; this model's {side_name} has {n_layers} layers "
                f"(0..{n_layers - 1}).")
        if point in valid:
            return HookPoint(name, side, int(layer), point)
    names = [p.name for p in all_hook_points(model)]
    near = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise HookPointError(
        f"Unknown hook point {name!r}.{hint} Names look like 'enc.3.resid_post', 'dec.1.cross_head_out' or "
        "'dec.final'; list them all with asrinterp_utils.hooks.hook_point_table(model).")


def resolve_hook_points(model: Any, names: Union[str, Sequence[str], Callable[[str], bool]]) -> list[HookPoint]:
    """Names, wildcard patterns (``"dec.*.mlp_out"``) or a predicate on names, to hook points in forward order."""
    every = all_hook_points(model)
    if callable(names):
        return [p for p in every if names(p.name)]
    if isinstance(names, str):
        names = [names]
    chosen: dict[str, HookPoint] = {}
    for pattern in names:
        if any(c in pattern for c in "*?["):
            hits = [p for p in every if fnmatch.fnmatchcase(p.name, pattern)]
            if not hits:
                raise HookPointError(
                    f"The pattern {pattern!r} matches no hook point of this model. Encoder points: "
                    f"{', '.join(ENCODER_POINTS)}; decoder points: {', '.join(DECODER_POINTS)}; layers "
                    f"0..{len(whisper_core(model).encoder.layers) - 1} (encoder) and "
                    f"0..{len(whisper_core(model).decoder.layers) - 1} (decoder); e.g. 'dec.*.cross_attn_out'.")
            chosen.update({p.name: p for p in hits})
        else:
            p = parse_hook_point(model, pattern)
            chosen[p.name] = p
    order = {p.name: i for i, p in enumerate(every)}
    return sorted(chosen.values(), key=lambda p: order[p.name])


def hook_point_table(model: Any):
    """A pandas DataFrame describing every hook point: name, side, layer, point, shape and the HF module it hooks."""
    import pandas as pd

    rows = []
    for p in all_hook_points(model):
        module_path, how = _module_path(p)
        rows.append({"name": p.name, "side": p.side, "layer": p.layer, "point": p.point, "shape": p.shape_doc,
                     "hf_module": module_path, "hooked_as": how, "writable": not p.is_pattern})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# Where each point lives in the Hugging Face modules
# --------------------------------------------------------------------------------------------------------------

def _module_path(p: HookPoint) -> tuple[str, str]:
    side = "model.encoder" if p.side == "enc" else "model.decoder"
    if p.layer is None:
        return f"{side}.layer_norm", "output"
    lay = f"{side}.layers.{p.layer}"
    attn = "self_attn" if p.point in ("attn_out", "attn_pattern", "head_out", "self_attn_out", "self_pattern",
                                      "self_head_out") else "encoder_attn"
    return {
        "resid_pre": (lay, "input"),
        "resid_post": (lay, "output"),
        "mlp_hidden": (f"{lay}.fc2", "input"),
        "mlp_out": (f"{lay}.fc2", "output"),
        "resid_post_attn": (f"{lay}.final_layer_norm", "input"),
        "resid_post_self": (f"{lay}.encoder_attn_layer_norm", "input"),
        "resid_post_cross": (f"{lay}.final_layer_norm", "input"),
    }.get(p.point, (f"{lay}.{attn}.out_proj", "input") if p.is_heads else
          (f"{lay}.{attn}", "output[1]" if p.is_pattern else "output[0]"))


def _get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path.removeprefix("model."))


# --------------------------------------------------------------------------------------------------------------
# Interventions
# --------------------------------------------------------------------------------------------------------------

PositionSel = Union[None, int, slice, Sequence[int], torch.Tensor]


@dataclass
class HookContext:
    """What a hook function is told besides the activation: the point, and the absolute positions
    ``(n_positions,)`` that this call covers (decoder tokens or encoder frames)."""

    point: HookPoint
    positions: torch.Tensor


@dataclass
class Intervention:
    """A change to an activation, restricted to some batch rows, positions and heads (None = all).

    ``mode`` is one of ``replace`` (by ``value``), ``add`` (``value``), ``scale`` (by ``value``), ``zero``,
    ``mean`` (replace by ``value``, a mean activation; None = the mean over this batch and positions), ``fn``
    (``value(act, ctx) -> act``) or ``from_rows`` (replace by the same activation of other rows ``value`` of the same
    batch: a reference run stacked beside the patched one). ``value`` may be a tensor in the point's layout (its position axis is indexed
    by absolute position; size 1 broadcasts), an :class:`~asrinterp_utils.cache.ActivationCache` holding the point
    (e.g. another run's), a number, or a function. Build them with :func:`replace`, :func:`add`, :func:`scale`,
    :func:`zero`, :func:`mean_ablate`, :func:`apply`.
    """

    mode: str
    value: Any = None
    heads: Union[None, int, Sequence[int]] = None
    positions: PositionSel = None
    rows: Union[None, int, slice, Sequence[int]] = None

    def __post_init__(self) -> None:
        if self.mode not in ("replace", "add", "scale", "zero", "mean", "fn", "from_rows"):
            raise ValueError(f"unknown intervention mode {self.mode!r}")


def _selects_nothing(sel: Any) -> bool:
    """Whether a heads/positions/rows selector is empty (None and single indices select something)."""
    if sel is None or isinstance(sel, (int, np.integer)):
        return False
    if isinstance(sel, slice):
        return (sel.start is not None and sel.stop is not None and 0 <= sel.stop <= sel.start
                and (sel.step or 1) > 0)
    if isinstance(sel, torch.Tensor):
        return sel.numel() == 0 or (sel.dtype == torch.bool and not bool(sel.any()))
    return len(sel) == 0


def _is_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return bool(torch.isfinite(value).all())
    return True


def _checked(iv: Intervention) -> Intervention:
    """What the constructors below refuse: a selector that selects nothing (the intervention would silently change
    nothing) and a value holding NaN or infinity (it would spread through every later activation)."""
    for what, sel in (("heads", iv.heads), ("positions", iv.positions), ("rows", iv.rows)):
        if _selects_nothing(sel):
            raise ValueError(f"{iv.mode}: {what} selects nothing ({sel!r}), so the intervention would change nothing; "
                             f"leave {what} out for all of them")
    if not _is_finite(iv.value):
        raise ValueError(f"{iv.mode}: the value holds NaN or infinity; an activation patched with it is no longer a "
                         "number (check how the value was computed)")
    return iv


def replace(value: Any, *, heads=None, positions=None, rows=None) -> Intervention:
    """Replace the activation by ``value`` (a tensor, another run's cache, or a number)."""
    return _checked(Intervention("replace", value, heads, positions, rows))


def add(delta: Any, *, heads=None, positions=None, rows=None) -> Intervention:
    """Add ``delta`` (e.g. a steering vector ``(d_model,)``)."""
    return _checked(Intervention("add", delta, heads, positions, rows))


def scale(factor: float, *, heads=None, positions=None, rows=None) -> Intervention:
    """Multiply the activation by ``factor``."""
    return _checked(Intervention("scale", factor, heads, positions, rows))


def zero(*, heads=None, positions=None, rows=None) -> Intervention:
    """Zero-ablate."""
    return _checked(Intervention("zero", None, heads, positions, rows))


def mean_ablate(mean: Any = None, *, heads=None, positions=None, rows=None) -> Intervention:
    """Replace by a mean activation: ``mean`` (tensor broadcastable to the point, e.g. ``(d_model,)`` or
    ``(heads, d_head)``, or a pooled cache), or None for the mean over this run's batch and positions."""
    return _checked(Intervention("mean", mean, heads, positions, rows))


def apply(fn: Callable[[torch.Tensor, HookContext], torch.Tensor], *, heads=None, positions=None,
          rows=None) -> Intervention:
    """Replace the activation by ``fn(act, ctx)`` (same shape)."""
    return _checked(Intervention("fn", fn, heads, positions, rows))


def from_rows(source_rows: Union[int, Sequence[int]], *, heads=None, positions=None, rows=None) -> Intervention:
    """Replace rows ``rows`` by the activation of rows ``source_rows`` of the same forward (one source row per
    patched row, in order). This patches from a reference run that is stacked in the same batch and steps with it,
    e.g. a white-noise run that is fed the patched run's tokens during generation
    (:func:`asrinterp_utils.patching.generate_sweep` builds these)."""
    return _checked(Intervention("from_rows", source_rows, heads, positions, rows))


def _index_list(sel, n: int, what: str) -> torch.Tensor | None:
    """A selector (int, slice, list, bool or int tensor) to sorted int indices in [0, n), or None for all."""
    if sel is None:
        return None
    if isinstance(sel, slice):
        return torch.arange(n)[sel]
    t = torch.as_tensor(sel)
    if t.dtype == torch.bool:
        return torch.nonzero(t.flatten()).flatten()
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise IndexError(f"{what} must be integer indices (or a slice, or a boolean mask); got "
                         f"{t.flatten().tolist()[:8]}")
    t = t.flatten().long()
    if t.numel() and (t.min() < -n or t.max() >= n):
        raise IndexError(f"{what} {t.tolist()} out of range for size {n}")
    return t % n if n else t


def _source_tensor(value: Any, point: HookPoint) -> Any:
    if isinstance(value, Mapping) and hasattr(value, "pooled"):  # an ActivationCache (cache.py, built on this module)
        if value.pooled:
            return value[point.name].unsqueeze(1)  # pooled (batch, ...) broadcast over positions
        return value[point.name]
    return value


def _align_source(src: torch.Tensor, act: torch.Tensor, ctx: HookContext, n_rows: int) -> torch.Tensor:
    """Index a source laid out like the point (absolute positions on axis 1) at this call's positions, and move it
    to the activation's device and dtype. A source with fewer dims than the activation broadcasts as it is."""
    src = torch.as_tensor(src)
    if src.dim() == act.dim():
        if src.shape[0] not in (1, n_rows):
            raise ValueError(
                f"{ctx.point.name}: the patch value has batch {src.shape[0]} but the run has batch {n_rows}; "
                "give one row per clip, or a single row to broadcast.")
        if src.shape[1] != 1:
            last = int(ctx.positions.max())
            if last >= src.shape[1]:
                raise IndexError(
                    f"{ctx.point.name}: the patch value covers {src.shape[1]} positions but the run reached position "
                    f"{last}. Give a value for every position (e.g. a source run as long as this one), a pooled "
                    "value (size 1 on the position axis), or restrict the patch with positions=...")
            src = src[:, ctx.positions.to(src.device)]
    try:
        torch.broadcast_shapes(src.shape, act.shape)
    except RuntimeError:
        raise ValueError(f"{ctx.point.name}: the patch value has shape {tuple(src.shape)}, which does not broadcast "
                         f"to the activation {tuple(act.shape)} (the point's layout: batch, positions, "
                         "...); give a value of that layout or of its last dimension") from None
    return src.to(device=act.device, dtype=act.dtype)


def _check_writable(point: HookPoint) -> None:
    if point.is_pattern:
        heads = {"attn_pattern": "head_out", "self_pattern": "self_head_out", "cross_pattern": "cross_head_out"}
        raise HookPointError(
            f"{point.name} is read-only: attention probabilities are recorded, not patched. Patch the per-head "
            f"outputs instead: '{point.side}.{point.layer}.{heads[point.point]}'.")


def _intervene(act: torch.Tensor, iv: Intervention, ctx: HookContext) -> torch.Tensor:
    """Apply one intervention to ``act`` (the point's layout) and return the new tensor; an error says which point
    and what it was given."""
    try:
        return _apply_intervention(act, iv, ctx)
    except (IndexError, ValueError, RuntimeError) as error:
        if str(error).startswith(ctx.point.name):
            raise
        raise type(error)(f"{ctx.point.name} ({iv.mode}, activation {tuple(act.shape)}): {error}") from error


def _apply_intervention(act: torch.Tensor, iv: Intervention, ctx: HookContext) -> torch.Tensor:
    point = ctx.point
    _check_writable(point)
    rows = _index_list(iv.rows, act.shape[0], "rows")
    sub = act if rows is None else act[rows]
    n_rows = sub.shape[0]
    value = _source_tensor(iv.value, point)
    if iv.mode == "zero":
        new = torch.zeros_like(sub)
    elif iv.mode == "scale":
        new = sub * float(value)
    elif iv.mode == "fn":
        new = value(sub, ctx)
        if new.shape != sub.shape:
            raise ValueError(f"{point.name}: the patch function returned shape {tuple(new.shape)}, "
                             f"expected {tuple(sub.shape)}")
    elif iv.mode == "from_rows":
        source = _index_list(value, act.shape[0], "source rows")
        if source is None or len(source) != n_rows:
            raise ValueError(f"{point.name}: from_rows needs one source row per patched row ({n_rows}); got "
                             f"{None if source is None else len(source)}")
        new = act[source.to(act.device)]
    elif iv.mode == "mean" and value is None:
        new = sub.mean(dim=(0, 1), keepdim=True).expand_as(sub)
    elif isinstance(value, (int, float)) and iv.mode != "mean":
        new = sub + value if iv.mode == "add" else torch.full_like(sub, float(value))
    else:
        src = _align_source(value, sub, ctx, n_rows)
        new = sub + src if iv.mode == "add" else src.expand_as(sub)
    # Restrict to the selected positions and heads. Whole rows are written as they are; over the whole batch the
    # mask is applied even when it selects everything, so that the result is a new tensor, never a view of the value.
    if rows is None or iv.positions is not None or iv.heads is not None:
        new = torch.where(_selection_mask(sub, iv, ctx), new, sub)
    if rows is None:
        return new
    out = act.clone()
    out[rows.to(act.device)] = new
    return out


def _selection_mask(sub: torch.Tensor, iv: Intervention, ctx: HookContext) -> torch.Tensor:
    """Where ``iv`` writes in ``sub`` (the point's layout): its positions and, at a per-head point, its heads, as a
    bool mask that broadcasts to ``sub``."""
    point = ctx.point
    mask = torch.ones(sub.shape[:3] if point.is_heads else sub.shape[:2], dtype=torch.bool, device=sub.device)
    pos_sel = _positions_mask(iv.positions, ctx.positions)
    if pos_sel is not None:
        pos_sel = pos_sel.to(sub.device)[None, :]
        mask &= pos_sel.unsqueeze(-1) if point.is_heads else pos_sel
    if iv.heads is not None:
        if not point.is_heads:
            raise HookPointError(f"heads=... needs a per-head point such as '{point.side}.{point.layer}."
                                 f"{'head_out' if point.side == 'enc' else 'cross_head_out'}', not {point.name!r}.")
        heads = _index_list(iv.heads, sub.shape[2], "heads")
        head_mask = torch.zeros(sub.shape[2], dtype=torch.bool, device=sub.device)
        head_mask[heads.to(sub.device)] = True
        mask &= head_mask[None, None, :]
    while mask.dim() < sub.dim():
        mask = mask.unsqueeze(-1)
    return mask


def _positions_mask(sel: PositionSel, positions: torch.Tensor) -> torch.Tensor | None:
    """Which of this call's absolute ``positions`` the selector picks, as a bool ``(n_positions,)``."""
    if sel is None:
        return None
    if isinstance(sel, slice):
        start, stop, step = sel.start or 0, sel.stop, sel.step or 1
        if start < 0 or (stop is not None and stop < 0):
            raise ValueError("positions slices must be absolute and non-negative (decoder positions grow during "
                             "generation, so negative indices are ambiguous)")
        ok = positions >= start
        if stop is not None:
            ok &= positions < stop
        return ok & ((positions - start) % step == 0)
    return torch.isin(positions, _absolute_positions(sel).to(positions.device))


def _absolute_positions(sel: PositionSel) -> torch.Tensor:
    """A positions selector that is not a slice (int, list, int or bool tensor) as ``(n,)`` int64 absolute
    positions. Floats (which would be truncated) and negative positions (which would match no position: decoder
    positions grow during generation) are refused."""
    t = torch.as_tensor(sel)
    if t.dtype == torch.bool:
        t = torch.nonzero(t.flatten()).flatten()
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise ValueError(f"positions must be integer (absolute) positions; got {t.flatten().tolist()[:8]}")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"positions must be absolute and non-negative (decoder positions grow during generation, so "
                         f"negative indices are ambiguous); got {t.flatten().tolist()[:8]}")
    return t.flatten().long()


# --------------------------------------------------------------------------------------------------------------
# Attaching hooks
# --------------------------------------------------------------------------------------------------------------

Reader = Callable[[torch.Tensor, HookContext], None]
Writer = Callable[[torch.Tensor, HookContext], torch.Tensor]


def _first_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_first_arg(args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


@dataclass
class HookSession:
    """Attaches readers and writers to hook points of one model and removes every handle on exit.

    Writers (patches) run before readers (caches) on the same module, and in the order they were attached (an outer
    ``patch`` before an inner one). Use through
    :func:`patch` or :func:`asrinterp_utils.cache.cache_activations`; open it with ``with``.
    """

    model: Any
    handles: list = field(default_factory=list)
    _dec_positions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.core = whisper_core(self.model)
        _annotate_heads(self.core)

    # -- lifecycle --
    def __enter__(self) -> "HookSession":
        self.handles.append(self.core.decoder.register_forward_pre_hook(_mark(self._track_decoder_fn()), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        _restore_attention(self.core)

    def _track_decoder_fn(self):
        return lambda module, args, kwargs: self._track_decoder(module, args, kwargs)

    def _track_decoder(self, module, args, kwargs):
        """Record the absolute positions of the decoder call (the KV cache length onwards)."""
        position_ids = kwargs.get("position_ids")
        ids = kwargs.get("input_ids", args[0] if args else None)
        n = (ids if ids is not None else kwargs["inputs_embeds"]).shape[1]
        if position_ids is not None:
            self._dec_positions = position_ids[0].detach().long().cpu()
            return None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        start = cache.get_seq_length() if cache is not None else 0  # as the decoder computes its positions
        self._dec_positions = torch.arange(int(start), int(start) + n)
        return None

    def _ctx(self, point: HookPoint, n_positions: int) -> HookContext:
        if point.side == "dec":
            pos = self._dec_positions
            if pos is None or len(pos) != n_positions:
                pos = torch.arange(n_positions)  # decoder layers called directly, outside the decoder
            return HookContext(point, pos)
        return HookContext(point, torch.arange(n_positions))

    # -- attaching --
    def add_reader(self, point: HookPoint, fn: Reader) -> None:
        self._attach(point, fn, write=False)

    def add_writer(self, point: HookPoint, fn: Writer) -> None:
        _check_writable(point)
        self._attach(point, fn, write=True)

    def _attach(self, point: HookPoint, fn, write: bool) -> None:
        path, how = _module_path(point)
        module = _get_module(self.core, path)
        prepend = write
        if how == "input" and point.point in ("resid_post_attn", "resid_post_self", "resid_post_cross") and write:
            self._attach_mid_writer(point, fn)
            return
        if how == "input":
            def pre_hook(mod, args, kwargs):
                act = _first_arg(args, kwargs)
                view = _heads_view(act, mod, point)
                ctx = self._ctx(point, view.shape[1])
                if not write:
                    fn(view, ctx)
                    return None
                new = fn(view, ctx)
                return _with_first_arg(args, kwargs, new.reshape(act.shape))
            handle = module.register_forward_pre_hook(_mark(pre_hook, write), with_kwargs=True, prepend=prepend)
            self._keep(handle, module._forward_pre_hooks, write)
        else:
            index = 1 if point.is_pattern else (0 if how == "output[0]" else None)

            def fwd_hook(mod, args, output):
                act = output if index is None else output[index]
                if act is None:
                    raise HookPointError(
                        f"{point.name}: the model computed no attention probabilities: its attention backend "
                        f"({self.core.config._attn_implementation!r}) was changed while the hook was attached. "
                        "Leave the backend alone inside cache_activations; this package switches to eager attention "
                        "for pattern points itself.")
                ctx = self._ctx(point, act.shape[2] if point.is_pattern else act.shape[1])
                if not write:
                    fn(act, ctx)
                    return None
                new = fn(act, ctx)
                if index is None:
                    return new
                return (*output[:index], new, *output[index + 1:])
            if point.is_pattern:
                fwd_hook._asrinterp_pattern_side = point.side
                _eager_for_patterns(self.core)
            self._keep(module.register_forward_hook(_mark(fwd_hook, write), prepend=prepend), module._forward_hooks,
                       write)

    def _attach_mid_writer(self, point: HookPoint, fn: Writer) -> None:
        """Write a mid-block residual ``r = residual + attn_out`` by changing the attention output to
        ``fn(r) - residual``; ``residual`` is read from the input of the attention's LayerNorm."""
        lay = f"{'encoder' if point.side == 'enc' else 'decoder'}.layers.{point.layer}"
        norm, attn = {"resid_post_attn": ("self_attn_layer_norm", "self_attn"),
                      "resid_post_self": ("self_attn_layer_norm", "self_attn"),
                      "resid_post_cross": ("encoder_attn_layer_norm", "encoder_attn")}[point.point]
        store: dict[str, torch.Tensor] = {}

        def grab_residual(mod, args, kwargs):
            store["residual"] = _first_arg(args, kwargs)
            return None

        def rewrite_attention(mod, args, output):
            residual = store.pop("residual")
            resid = residual + output[0]
            new = fn(resid, self._ctx(point, resid.shape[1]))
            return (new - residual, *output[1:])
        self.handles.append(self.core.get_submodule(f"{lay}.{norm}").register_forward_pre_hook(
            _mark(grab_residual), with_kwargs=True, prepend=True))
        attention = self.core.get_submodule(f"{lay}.{attn}")
        self._keep(attention.register_forward_hook(_mark(rewrite_attention, True), prepend=True),
                   attention._forward_hooks, True)

    def _keep(self, handle: Any, hooks: dict, write: bool) -> None:
        """Keep the handle; a writer (registered first on its module) moves behind this package's earlier writers.

        Writers therefore run in the order they were attached, before every other hook on the module (readers,
        caches, transformers' own): an outer ``patch`` before an inner one, a dict's entries in their order.
        """
        self.handles.append(handle)
        if not write:
            return
        others = [k for k in hooks if k != handle.id]
        writers = [k for k in others if getattr(hooks[k], "_asrinterp_writer", False)]
        for key in writers + [handle.id] + [k for k in others if k not in writers]:
            hooks.move_to_end(key)


def _heads_view(act: torch.Tensor, out_proj: nn.Module, point: HookPoint) -> torch.Tensor:
    """``(batch, pos, d_model)`` -> ``(batch, pos, heads, d_head)`` for per-head points; others unchanged."""
    if not point.is_heads:
        return act
    core_attn_heads = out_proj._asrinterp_heads
    return act.view(*act.shape[:-1], core_attn_heads, act.shape[-1] // core_attn_heads)


def _annotate_heads(core: nn.Module) -> None:
    """Tell each attention ``out_proj`` how many heads feed it (used to view its input per head)."""
    for layers in (core.encoder.layers, core.decoder.layers):
        for layer in layers:
            for attn in (getattr(layer, "self_attn", None), getattr(layer, "encoder_attn", None)):
                if attn is not None:
                    attn.out_proj._asrinterp_heads = attn.num_heads


@contextmanager
def patch(model: Any, interventions: Mapping[str, Union[Intervention, Sequence[Intervention]]]
          ) -> Iterator[HookSession]:
    """Within the ``with`` block, every forward (and ``generate``) of ``model`` applies ``interventions``.

    ``interventions`` maps hook-point names or wildcard patterns to one :class:`Intervention` or a list (applied in
    order). A tensor or cache given directly instead of an Intervention means :func:`replace`. Example::

        with patch(lm, {"dec.2.cross_head_out": replace(noise_cache, heads=[5])}):
            text = run.transcribe(lm, [clip])
    """
    plan: list[tuple[HookPoint, list[Intervention]]] = []
    if not isinstance(interventions, Mapping):
        raise TypeError(f"patch takes a dict of hook-point name -> intervention, got {type(interventions).__name__}")
    for name, ivs in interventions.items():
        ivs = [ivs] if not isinstance(ivs, (list, tuple)) else list(ivs)
        for iv in ivs:
            if not isinstance(iv, (Intervention, torch.Tensor, np.ndarray, int, float, Mapping)):
                raise TypeError(f"patch: the value for {name!r} is a {type(iv).__name__}; give an Intervention "
                                "(zero(), add(v), replace(cache), ...), a tensor, a number or a cache")
        ivs = [iv if isinstance(iv, Intervention) else replace(iv) for iv in ivs]
        for point in resolve_hook_points(model, name):
            plan.append((point, ivs))
    with HookSession(model) as session:
        for point, ivs in plan:
            def writer(act, ctx, ivs=ivs):
                for iv in ivs:
                    act = _intervene(act, iv, ctx)
                return act
            session.add_writer(point, writer)
        yield session


def active_hook_count(model: Any) -> int:
    """How many of this package's hooks are attached anywhere in ``model`` (0 after every ``with`` block).
    Hooks that transformers itself keeps (e.g. for ``output_hidden_states``) are not counted."""
    core = whisper_core(model)
    return sum(getattr(fn, "_asrinterp_hook", False)
               for m in core.modules() for fn in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()))


def pattern_hook_sides(model: Any) -> set[str]:
    """The sides (``"enc"``, ``"dec"``) on which a hook of this package reads an attention pattern: only eager
    attention computes one, so :mod:`asrinterp_utils.run` keeps eager attention there."""
    core = whisper_core(model)
    return {side for m in core.modules() for fn in m._forward_hooks.values()
            if (side := getattr(fn, "_asrinterp_pattern_side", None))}


_SAVED_ATTENTION = "_asrinterp_attention_before_patterns"


def _eager_for_patterns(core: nn.Module) -> None:
    """Only eager attention computes attention probabilities: switch the model to it while pattern hooks are
    attached, remembering its own backend (once, however many sessions nest)."""
    config = core.config
    if config._attn_implementation == "eager" or hasattr(core, _SAVED_ATTENTION):
        return
    setattr(core, _SAVED_ATTENTION, config._attn_implementation)
    config._attn_implementation = "eager"


def _restore_attention(core: nn.Module) -> None:
    """The model's own attention backend again, once no hook of this package reads a pattern."""
    if hasattr(core, _SAVED_ATTENTION) and not pattern_hook_sides(core):
        core.config._attn_implementation = getattr(core, _SAVED_ATTENTION)
        delattr(core, _SAVED_ATTENTION)


def _mark(fn, write: bool = False):
    fn._asrinterp_hook = True
    fn._asrinterp_writer = write
    return fn
