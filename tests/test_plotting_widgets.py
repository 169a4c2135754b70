"""Figures label their axes and respect true lengths; explorers precompute every view and link it in the browser."""
from __future__ import annotations

import ipywidgets as ipw
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from asrinterp_utils import plotting, widgets  # noqa: E402


def test_cross_attention_heatmap_crops_to_real_frames_and_labels_axes():
    pattern = np.random.default_rng(0).random((5, 1500))
    ax = plotting.cross_attention_heatmap(pattern, ["a", "b", "c", "d", "e"], n_frames=100, title="t")
    assert ax.collections[0].get_array().size == 5 * 100  # only the real frames are drawn
    assert "s" in ax.get_xlabel() and ax.get_ylabel() and ax.get_title() == "t"
    assert ax.get_xticklabels()[-1].get_text() == f"{99 * 0.02:.1f}"
    plt.close("all")


def test_figure_to_png_and_token_labels():
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    assert plotting.figure_to_png(fig).startswith(b"\x89PNG")

    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return {1: " hello", 2: "<|endoftext|>", 3: " "}[ids[0]]
    assert plotting.token_labels(Tok(), [1, 2, 3]) == ["␣hello", "<|endoftext|>", "' '"]


def test_image_explorer_links_sliders_to_stacks_in_the_browser():
    pngs = {(r, c): f"{r}{c}".encode() for r in range(2) for c in range(3)}
    box = widgets.image_explorer(pngs, title="x")
    header, sliders, outer = box.children
    row, col = sliders.children
    assert isinstance(outer, ipw.Stack) and len(outer.children) == 2 and outer.selected_index == 1
    assert [img.value for img in outer.children[1].children] == [b"10", b"11", b"12"]
    linked = {(lk.source[0].model_id, lk.target[0].model_id) for lk in box.links}
    assert all(type(lk).__name__ == "Link" for lk in box.links)  # client-side jslink, not a Python callback
    assert (row.model_id, outer.model_id) in linked
    assert all((col.model_id, inner.model_id) in linked for inner in outer.children)
    with pytest.raises(ValueError, match="full grid"):
        widgets.image_explorer({(0, 0): b"", (1, 1): b""})
    with pytest.raises(ValueError, match="numbered 0..n-1"):
        widgets.image_explorer({(1, 0): b"", (2, 0): b""})


def test_choice_explorer():
    box = widgets.choice_explorer([("a", b"1"), ("b", b"2")])
    picker, stack = box.children
    assert picker.options == (("a", 0), ("b", 1)) and len(stack.children) == 2


def test_text_explorer_and_lens_heatmap(toy, toy_inputs):
    from asrinterp_utils import lens, plotting

    box = widgets.text_explorer({(r, c): f"<p>{r}-{c}</p>" for r in range(2) for c in range(3)}, title="t")
    assert len(box.links) == 3
    feats, _, ids = toy_inputs
    result = lens.logit_lens(toy, feats, ids, top_k=1)

    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return f"t{ids[0]}"

    ax = plotting.lens_heatmap(result, Tok(), ids[0].tolist(), title="lens")
    assert ax.get_ylabel() == "lens layer" and "top-1" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "output"
    assert len(ax.texts) == 3 * 7  # one annotation per cell


def test_forest_plot_draws_each_claim_model_and_reported_value():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import pytest

    from asrinterp_utils import plotting

    table = pd.DataFrame({"claim": ["loops resolved", "loops resolved", "bias flipped"],
                          "model": ["tiny.en", "base", "tiny.en"], "value": [0.5, 0.4, 0.1],
                          "low": [0.3, 0.2, -0.1], "high": [0.7, 0.6, 0.3], "reported": [0.8, 0.8, None]})
    ax = plotting.forest(table, xlabel="share of loops resolved")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["loops resolved", "bias flipped"]
    assert ax.get_xlabel() == "share of loops resolved"
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"tiny.en", "base", "reported by the paper"}
    with pytest.raises(ValueError, match="no column"):
        plotting.forest(table.drop(columns=["low"]))
    per_claim = plotting.forest(table.assign(null=[0.0, 0.0, 0.5]), null="null")  # a null of each claim's own
    assert "no effect (chance, or none resolved)" in {t.get_text() for t in per_claim.get_legend().get_texts()}
    with pytest.raises(ValueError, match="null='chance' is not a column"):
        plotting.forest(table, null="chance")
