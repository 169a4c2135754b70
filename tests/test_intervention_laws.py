"""The intervention algebra's laws, property-tested (hypothesis) on a small random-initialised Whisper.

For any writable hook point, any subset of rows, positions and (on per-head points) heads:

- the identity patch (each activation replaced by its own clean value) changes nothing downstream;
- zero then add(v) reads v; add(v) then zero reads 0; scale(a) then scale(b) is scale(a * b);
- a restricted patch changes the selected entries and nothing else;
- nested patches equal one list applied in the same order (outer first, then inner).

The value is read at the patched point itself: a cache on a point records it after every patch on that point.
"""
from __future__ import annotations

import contextlib

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asrinterp_utils import hooks
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.hooks import add, patch, replace, scale, zero

from .conftest import random_whisper

TOY = random_whisper()
G = torch.Generator().manual_seed(3)
FEATS = torch.randn(2, 80, 300, generator=G)
IDS = torch.randint(3, 120, (2, 6), generator=G)
IDS[:, 0] = 1
POINTS = [p.name for p in hooks.resolve_hook_points(TOY, "*") if not p.is_pattern]
LAWS = settings(max_examples=15, deadline=None, derandomize=True)


@torch.no_grad()
def run_reading(name: str, *plans) -> tuple[torch.Tensor, torch.Tensor]:
    """(the activation at ``name``, the logits) with ``plans`` patched, outermost first."""
    with contextlib.ExitStack() as stack:
        for plan in plans:
            stack.enter_context(patch(TOY, plan))
        cache = stack.enter_context(cache_activations(TOY, name))
        logits = TOY(FEATS, decoder_input_ids=IDS).logits
    return cache[name], logits


CLEAN = {name: run_reading(name) for name in POINTS}


@st.composite
def selections(draw):
    """A writable point and a restriction of rows, positions and heads (None = all)."""
    name = draw(st.sampled_from(POINTS))
    act = CLEAN[name][0]
    point = hooks.parse_hook_point(TOY, name)
    subset = lambda n: st.one_of(st.none(), st.lists(st.integers(0, n - 1), min_size=1, max_size=n,  # noqa: E731
                                                      unique=True).map(sorted))
    rows = draw(subset(act.shape[0]))
    positions = draw(subset(act.shape[1]))
    heads = draw(subset(act.shape[2])) if point.is_heads else None
    return name, dict(rows=rows, positions=positions, heads=heads)


def selected_mask(act: torch.Tensor, rows, positions, heads) -> torch.Tensor:
    """``act``-shaped bool: the entries that the restriction selects."""
    index = [torch.arange(n) if sel is None else torch.tensor(sel)
             for n, sel in zip(act.shape, (rows, positions) if heads is None else (rows, positions, heads))]
    mask = torch.zeros(act.shape[:len(index)], dtype=torch.bool)
    mask[torch.meshgrid(*index, indexing="ij")] = True
    return mask.view(*mask.shape, *([1] * (act.dim() - mask.dim()))).expand(act.shape)


@LAWS
@given(selections())
def test_the_identity_patch_changes_nothing(selection):
    name, where = selection
    own = CLEAN[name][0] if where["rows"] is None else CLEAN[name][0][where["rows"]]  # one row per patched row
    act, logits = run_reading(name, {name: replace(own, **where)})
    assert torch.allclose(act, CLEAN[name][0]) and torch.allclose(logits, CLEAN[name][1], atol=1e-6)


@LAWS
@given(selections(), st.floats(-3, 3, allow_nan=False), st.floats(-3, 3, allow_nan=False))
def test_zero_add_and_scale_compose_as_written(selection, a, b):
    name, where = selection
    clean = CLEAN[name][0]
    mask = selected_mask(clean, **where)
    v = torch.full(clean.shape[-1:], a)
    zero_then_add, _ = run_reading(name, {name: zero(**where)}, {name: add(v, **where)})
    assert torch.allclose(zero_then_add[mask], v.expand_as(clean)[mask])
    add_then_zero, _ = run_reading(name, {name: [add(v, **where), zero(**where)]})
    assert torch.equal(add_then_zero[mask], torch.zeros_like(clean)[mask])
    twice, _ = run_reading(name, {name: scale(a, **where)}, {name: scale(b, **where)})
    once, _ = run_reading(name, {name: scale(a * b, **where)})
    assert torch.allclose(twice, once, atol=1e-5)


@LAWS
@given(selections())
def test_a_restricted_patch_touches_nothing_else(selection):
    name, where = selection
    clean = CLEAN[name][0]
    mask = selected_mask(clean, **where)
    act, _ = run_reading(name, {name: add(torch.ones(clean.shape[-1]), **where)})
    assert torch.equal(act[~mask], clean[~mask])
    assert torch.allclose(act[mask], clean[mask] + 1)


@LAWS
@given(selections(), st.floats(-2, 2, allow_nan=False))
def test_nesting_equals_one_list_in_the_same_order(selection, a):
    name, where = selection
    width = CLEAN[name][0].shape[-1]
    first, second = add(torch.full((width,), a), **where), scale(-0.5, **where)
    nested, _ = run_reading(name, {name: first}, {name: second})
    listed, _ = run_reading(name, {name: [first, second]})
    assert torch.allclose(nested, listed, atol=1e-6)  # mid-block points write fn(r) - residual: float rounding
