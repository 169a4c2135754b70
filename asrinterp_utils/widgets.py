"""Explorers that keep working in the static book.

A published Jupyter Book has no Python kernel: a slider wired to a Python callback renders but does nothing. These
explorers precompute every view (one image per choice) and switch between them in the browser with
``ipywidgets.jslink`` between sliders and ``ipywidgets.Stack``, which the saved widget state carries into the page.
"""
from __future__ import annotations

from numbers import Integral
from typing import Callable, Mapping, Sequence

import ipywidgets as widgets


def image_explorer(images: Mapping[tuple[int, int], bytes], *, row_name: str = "layer", col_name: str = "head",
                   title: str = "") -> widgets.VBox:
    """Two sliders choosing among precomputed PNG images keyed by ``(row, col)`` (e.g. ``(layer, head)``).

    The switching is done by the browser (``jslink`` to nested ``Stack`` widgets), so it works in the static HTML
    as well as in a live notebook. Rows and columns must form a full grid.
    """
    _check_views(images, bytes, "image_explorer", "PNG bytes (a figure saved to io.BytesIO with format='png')")
    views = {key: widgets.Image(value=png, format="png") for key, png in images.items()}
    return _slider_grid(views, row_name=row_name, col_name=col_name, title=title)


def text_explorer(texts: Mapping[tuple[int, int], str], *, row_name: str = "clip", col_name: str = "layer",
                  title: str = "") -> widgets.VBox:
    """Two sliders choosing among precomputed HTML snippets keyed by ``(row, col)`` (e.g. the encoder lens's
    transcript of clip ``row`` from layer ``col``); like :func:`image_explorer`, it works in the static page."""
    _check_views(texts, str, "text_explorer", "an HTML string")
    views = {key: widgets.HTML(value=html) for key, html in texts.items()}
    return _slider_grid(views, row_name=row_name, col_name=col_name, title=title)


def _check_views(views: Mapping, kind: type, caller: str, what: str) -> None:
    """Views keyed by ``(row, col)`` pairs of whole numbers, each of ``kind``."""
    if not isinstance(views, Mapping) or not views:
        raise ValueError(f"{caller}: give a non-empty dict {{(row, col): view}}; got "
                         f"{type(views).__name__}{' (empty)' if isinstance(views, Mapping) else ''}")
    for key, view in views.items():
        whole = isinstance(key, tuple) and all(isinstance(k, Integral) and not isinstance(k, bool) for k in key)
        if not (whole and len(key) == 2):
            raise ValueError(f"{caller}: every key is a (row, col) pair of whole numbers; got {key!r}")
        if not isinstance(view, kind):
            raise ValueError(f"{caller}: the view at {key} must be {what}; got {type(view).__name__}")


def _slider_grid(views: Mapping[tuple[int, int], widgets.Widget], *, row_name: str, col_name: str,
                 title: str) -> widgets.VBox:
    """Two sliders switching, in the browser, among widgets keyed by ``(row, col)`` on a full grid."""
    rows = sorted({r for r, _ in views})
    cols = sorted({c for _, c in views})
    missing = [(r, c) for r in rows for c in cols if (r, c) not in views]
    if missing:
        raise ValueError(f"an explorer needs a full grid of (row, col) views; missing {missing[:5]}")
    if rows != list(range(len(rows))) or cols != list(range(len(cols))):
        raise ValueError("an explorer expects rows and columns numbered 0..n-1 (slider value = stack index)")
    row_slider = widgets.IntSlider(value=rows[-1], min=rows[0], max=rows[-1], description=row_name,
                                   continuous_update=True)
    col_slider = widgets.IntSlider(value=cols[0], min=cols[0], max=cols[-1], description=col_name,
                                   continuous_update=True)
    inner, links = [], []
    for r in rows:
        stack = widgets.Stack([views[(r, c)] for c in cols], selected_index=0)
        links.append(widgets.jslink((col_slider, "value"), (stack, "selected_index")))
        inner.append(stack)
    outer = widgets.Stack(inner, selected_index=len(rows) - 1)
    links.append(widgets.jslink((row_slider, "value"), (outer, "selected_index")))
    header = [widgets.HTML(f"<b>{title}</b>")] if title else []
    box = widgets.VBox([*header, widgets.HBox([row_slider, col_slider]), outer])
    box.links = links  # the browser-side links (ipywidgets.Link), kept for inspection
    return box


def grid_explorer(render: Callable[[int, int], bytes], n_rows: int, n_cols: int, **kwargs) -> widgets.VBox:
    """:func:`image_explorer` over ``render(row, col) -> PNG bytes`` for every row in ``range(n_rows)`` and column
    in ``range(n_cols)``."""
    return image_explorer({(r, c): render(r, c) for r in range(n_rows) for c in range(n_cols)}, **kwargs)


def choice_explorer(images: Sequence[tuple[str, bytes]], *, description: str = "show") -> widgets.VBox:
    """A dropdown choosing among labelled precomputed images; switching happens in the browser."""
    if not images or any(not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                               and isinstance(item[1], bytes)) for item in images):
        raise ValueError("choice_explorer: give a non-empty list of (label, PNG bytes) pairs")
    labels = [label for label, _ in images]
    picker = widgets.Dropdown(options=[(label, i) for i, label in enumerate(labels)], value=0,
                              description=description)
    stack = widgets.Stack([widgets.Image(value=png, format="png") for _, png in images], selected_index=0)
    widgets.jslink((picker, "index"), (stack, "selected_index"))
    return widgets.VBox([picker, stack])
