"""One figure style for the book: seaborn/matplotlib helpers that label their axes and respect true clip lengths."""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .audio import SECONDS_PER_FRAME


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
    pattern = np.asarray(pattern, dtype=np.float32)
    if pattern.ndim != 2 or len(tokens) != pattern.shape[0]:
        raise ValueError(f"cross_attention_heatmap: pattern must be (tokens, frames) with one row per token label; "
                         f"got {pattern.shape} for {len(tokens)} tokens (take one head of one clip: "
                         "cache[point][clip, head])")
    if not 1 <= int(n_frames) <= pattern.shape[1]:
        raise ValueError(f"cross_attention_heatmap: n_frames must be 1..{pattern.shape[1]} (the clip's real "
                         f"frames, lm.features(clips)[1]); got {n_frames}")
    pattern = pattern[:, :int(n_frames)]
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


def lens_heatmap(result, tokenizer, input_ids: Sequence[int], *, row: int = 0, positions: Sequence[int] | None = None,
                 ax=None, title: str | None = None, max_chars: int = 7):
    """The logit lens of one transcript as a heatmap: lens layers (rows, 0 = embeddings, top = the model's output)
    by decoder positions (columns, labelled with the input token read there), coloured by the probability the lens
    gives the model's final prediction, with the lens's own top-1 token written in each cell.

    ``result`` is a :class:`~asrinterp_utils.lens.LogitLensResult`; ``input_ids`` the teacher-forced ids of batch row
    ``row``. Returns the matplotlib Axes.
    """
    n_rows, n_positions = result.final_prob.shape[1:3]
    if not 0 <= row < n_rows or len(input_ids) != n_positions:
        raise ValueError(f"lens_heatmap: row must be in 0..{n_rows - 1} and input_ids that row's {n_positions} "
                         f"teacher-forced ids (the labels of the columns); got row {row} and {len(input_ids)} ids")
    positions = list(range(len(input_ids))) if positions is None else list(positions)
    prob = result.final_prob[:, row, positions].numpy()  # (layers, positions)
    tops = result.top_ids[:, row, positions, 0].numpy()
    n_layers = prob.shape[0]
    if ax is None:
        _, ax = plt.subplots(figsize=(min(18, 2 + 0.85 * len(positions)), 0.55 * n_layers + 1.8))
    cells = [[_short(tokenizer.decode([int(t)]), max_chars) for t in layer_tops] for layer_tops in tops]
    sns.heatmap(prob[::-1], ax=ax, cmap="viridis", vmin=0, vmax=1, annot=np.array(cells[::-1]), fmt="",
                annot_kws={"fontsize": 7}, cbar_kws={"label": "lens probability of the final prediction"})
    ax.set_yticks(np.arange(n_layers) + 0.5)
    ax.set_yticklabels([("output" if layer == n_layers - 1 else "embed" if layer == 0 else f"layer {layer}")
                        for layer in range(n_layers)][::-1], rotation=0)
    ax.set_xticklabels([_short(label, max_chars + 3) for label in token_labels(tokenizer,
                                                                               [input_ids[p] for p in positions])],
                       rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("decoder input token (the cell shows the lens's top-1 prediction of the next token)")
    ax.set_ylabel("lens layer")
    if title:
        ax.set_title(title)
    return ax


def probe_curves(table, *, ax=None, title: str | None = None, x: str = "depth", control: bool = True,
                 palette: dict | None = None, chance: bool = True):
    """Probe accuracy per layer for several feature sources (a :class:`~asrinterp_utils.probes.ProbeSweep` table).

    Sources with several layers are lines with a shaded 95% speaker-bootstrap band, the best layer ringed;
    single-layer sources (a log-mel baseline) are horizontal dotted lines. With ``control``, each source's
    shuffled-label accuracy is a thin dashed line of the same colour; with ``chance``, the majority-class rate is a
    grey line. ``x="depth"`` puts layers on a 0..1 relative-depth axis (models of different depth compare);
    ``x="layer"`` uses layer numbers. Returns the Axes.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.8))
    sources = list(dict.fromkeys(table["source"]))
    colours = palette or dict(zip(sources, sns.color_palette("colorblind", len(sources))))
    for name in sources:
        rows = table[table["source"] == name].sort_values("layer")
        colour = colours[name]
        if len(rows) == 1:
            ax.axhline(float(rows["accuracy"].iloc[0]), color=colour, ls=":", lw=1.8, label=f"{name}")
            continue
        xs = rows[x].to_numpy(dtype=float)
        ax.plot(xs, rows["accuracy"], "-o", color=colour, lw=1.8, ms=4, label=name)
        ax.fill_between(xs, rows["ci_low"], rows["ci_high"], color=colour, alpha=0.15, lw=0)
        best = rows[rows["is_best"]] if "is_best" in rows else rows.iloc[[int(rows["accuracy"].argmax())]]
        ax.plot(best[x], best["accuracy"], "o", ms=11, mfc="none", mec=colour, mew=1.8)
        if control and "control_accuracy" in rows and rows["control_accuracy"].notna().any():
            ax.plot(xs, rows["control_accuracy"], "--", color=colour, lw=1, alpha=0.8)
    if chance:
        ax.axhline(float(table["chance"].iloc[0]), color="0.5", lw=1, label="chance (majority class)")
    ax.set_xlabel("relative depth (0 = first layer, 1 = last)" if x == "depth" else "layer")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    if x == "depth":
        ax.set_xlim(-0.05, 1.05)
    if title:
        ax.set_title(title)
    return ax


def _short(text: str, n: int) -> str:
    """Shorten a token's text to ``n`` characters for a cell; characters from U+3000 on (CJK, Hangul: not in the
    figure font) are shown as ``□``."""
    text = "".join("□" if ord(ch) >= 0x3000 else ch for ch in text.replace("\n", " "))
    return text if len(text) <= n else text[: n - 1] + "…"


def figure_to_png(fig, dpi: int = 80) -> bytes:
    """Render a figure to PNG bytes and close it (for widgets that switch between precomputed images)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def patch_heatmap(values, *, row_label: str = "layer", col_label: str = "component", value_label: str,
                  ax=None, title: str | None = None, center: float | None = 0.0, fmt: str = ".2f",
                  annotate: bool = True, cmap: str | None = None):
    """A patching result as a heatmap: ``values`` is a DataFrame indexed by layer (rows) with one column per
    component or head; each cell is the metric (or its change) with that target patched. Diverging colours around
    ``center`` (0: no change) unless ``center`` is None. Returns the Axes."""
    import pandas as pd

    shape = values.shape if isinstance(values, pd.DataFrame) else np.shape(np.asarray(values, dtype=object))
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"patch_heatmap: values must be a non-empty (layers, components) table; got shape {shape} "
                         "(patching.layer_grid turns a sweep's values into one)")
    frame = values if isinstance(values, pd.DataFrame) else pd.DataFrame(np.asarray(values))
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 0.75 * frame.shape[1], 0.9 + 0.42 * frame.shape[0]))
    data = frame.to_numpy(dtype=float)
    kwargs = dict(cmap=cmap or ("RdBu_r" if center is not None else "viridis"))
    if center is not None:
        span = float(np.nanmax(np.abs(data - center))) if np.isfinite(data).any() else 1.0
        kwargs.update(vmin=center - (span or 1.0), vmax=center + (span or 1.0), center=center)
    sns.heatmap(frame, ax=ax, annot=annotate and frame.size <= 120, fmt=fmt, annot_kws={"fontsize": 8},
                cbar_kws={"label": value_label}, linewidths=0.4, linecolor="white", **kwargs)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.tick_params(axis="y", rotation=0)
    if title:
        ax.set_title(title)
    return ax


def forest(table, *, ax=None, label: str = "claim", group: str = "model", value: str = "value", low: str = "low",
           high: str = "high", reported: str | None = "reported", null: float | str | None = 0.0,
           xlabel: str = "effect", title: str | None = None, legend: bool = True):
    """A forest plot: one row per ``label`` (a claim), one marker per ``group`` (a model) at ``value`` with a line
    from ``low`` to ``high`` (its interval), the paper's ``reported`` value (where the table has one) as a red
    cross, and the ``null`` as a dashed vertical line (a number) or, when claims have nulls of their own (chance
    differs by task), a column: a short grey bar on each claim's row. ``table`` is long: one row per claim and
    model. Claims are wrapped onto two lines; the legend (``legend=False``: none) sits in a row above the axes.
    Returns the matplotlib Axes."""
    import textwrap

    import pandas as pd

    frame = pd.DataFrame(table)
    missing = [c for c in (label, group, value, low, high) if c not in frame.columns]
    if missing:
        raise ValueError(f"forest: the table has no column {missing}; it has {list(frame.columns)}")
    claims = list(dict.fromkeys(frame[label]))
    groups = list(dict.fromkeys(frame[group]))
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 0.55 * len(claims) * max(1, len(groups)) ** 0.5 + 1.4))
    colours = dict(zip(groups, sns.color_palette("colorblind", len(groups))))
    offsets = np.linspace(-0.22, 0.22, len(groups)) if len(groups) > 1 else [0.0]
    for offset, g in zip(offsets, groups):
        rows = frame[frame[group] == g]
        y = np.array([claims.index(c) for c in rows[label]]) + offset
        ax.errorbar(rows[value], y, xerr=[rows[value] - rows[low], rows[high] - rows[value]], fmt="o", ms=5,
                    capsize=3, color=colours[g], label=str(g))
    if reported is not None and reported in frame.columns:
        shown = frame.dropna(subset=[reported]).drop_duplicates(label)
        if len(shown):
            ax.scatter(shown[reported], [claims.index(c) for c in shown[label]], marker="x", color="tab:red", s=60,
                       zorder=3, label="reported by the paper")
    if isinstance(null, str):
        if null not in frame.columns:
            raise ValueError(f"forest: null={null!r} is not a column of the table; it has {list(frame.columns)}")
        nulls = frame.drop_duplicates(label)
        ax.scatter(nulls[null], [claims.index(c) for c in nulls[label]], marker="|", s=500, color="grey", zorder=1,
                   label="no effect (chance, or none resolved)")
    elif null is not None:
        ax.axvline(null, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(claims)))
    ax.set_yticklabels(["\n".join(textwrap.wrap(str(c), 34, max_lines=2, placeholder="...")) for c in claims],
                       fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("")
    if legend:
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    if title:
        ax.set_title(title)
    return ax
