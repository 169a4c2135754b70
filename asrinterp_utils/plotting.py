"""One figure style for the book: seaborn/matplotlib helpers that label their axes and respect true clip lengths."""
from __future__ import annotations

import io
from typing import Sequence


import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

SECONDS_PER_FRAME = 0.02
"""One encoder frame is 20 ms."""


def set_style() -> None:
    """The book's figure style: seaborn ``ticks`` with a readable font size and a white background."""
    sns.set_theme(context="notebook", style="ticks", font_scale=1.0,
                  rc={"figure.dpi": 100, "savefig.dpi": 100, "figure.facecolor": "white",
                      "axes.titleweight": "bold"})


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """Readable labels for token ids: the decoded text of each token (special tokens keep their ``<|...|>`` name,
    a leading space is shown as ``␣``)."""
    labels = []
    for i in ids:
        text = tokenizer.decode([int(i)], skip_special_tokens=False)
        labels.append(text.replace(" ", "␣") if text.strip() else repr(text))
    return labels


def cross_attention_heatmap(pattern: np.ndarray, tokens: Sequence[str], n_frames: int, *, ax=None,
                            title: str | None = None, cbar: bool = True, max_ticks: int = 12):
    """Heatmap of cross-attention ``pattern (tokens, frames)`` over the clip's real frames only.

    Rows are decoder tokens (the label of the token *being read*, i.e. the input at that position), columns the
    first ``n_frames`` encoder frames with the x axis in seconds. Returns the matplotlib Axes.
    """
    pattern = np.asarray(pattern, dtype=np.float32)[:, :n_frames]
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12, 3 + n_frames / 40), 0.28 * len(tokens) + 1.6))
    sns.heatmap(pattern, ax=ax, cmap="magma", cbar=cbar, vmin=0.0, vmax=float(pattern.max()) or 1.0,
                cbar_kws={"label": "attention probability"} if cbar else None, rasterized=True)
    ticks = np.linspace(0, n_frames - 1, num=min(max_ticks, n_frames)).round().astype(int)
    ax.set_xticks(ticks + 0.5)
    ax.set_xticklabels([f"{t * SECONDS_PER_FRAME:.1f}" for t in ticks], rotation=0)
    ax.set_yticks(np.arange(len(tokens)) + 0.5)
    ax.set_yticklabels(tokens, rotation=0, fontsize=8)
    ax.set_xlabel("audio time (s), encoder frames of 20 ms")
    ax.set_ylabel("decoder input token")
    if title:
        ax.set_title(title)
    return ax


def figure_to_png(fig, dpi: int = 80) -> bytes:
    """Render a figure to PNG bytes and close it (for widgets that switch between precomputed images)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
