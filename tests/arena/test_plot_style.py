"""The arena's plots: one style per layer, the same in every plot; legends off the panels."""

from __future__ import annotations

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba

from statewise import layers
from statewise.arena.plots import (
    PALETTE,
    layer_style,
    length_generalisation_figure,
    loss_curves_figure,
    mqar_figure,
    write_plots,
)

LAYERS = layers.names()
TASKS = ("parity", "modular_arithmetic", "selective_copy", "induction_heads")


def _board() -> dict:
    """Every registered layer on four length-generalisation tasks and two MQAR tasks."""
    board = {}
    for t, task in enumerate(TASKS):
        rows = [
            {
                "layer": layer,
                "test_accuracy": {
                    str(n): ((i + t) % 7) / 7 + 0.1 * k for k, n in enumerate((64, 128, 256))
                },
            }
            for i, layer in enumerate(LAYERS)
        ]
        board[task] = {"metric": "test_accuracy", "rows": rows}
    for task in ("mqar", "mqar_128x8"):
        rows = [
            {"layer": layer, "state_floats": 100 * (i + 1), "value": (i % 5) / 5}
            for i, layer in enumerate(LAYERS)
        ]
        board[task] = {"metric": "val_accuracy", "rows": rows}
    return board


def _results() -> list[dict]:
    return [
        {
            "task": task,
            "layer": layer,
            "loss_curve": [(s, 0.5 * s, 3.0 / (1 + s + i)) for s in range(20)],
        }
        for task in TASKS[:2]
        for i, layer in enumerate(LAYERS)
    ]


def _figures() -> dict:
    return {
        "length_generalisation": length_generalisation_figure(_board()),
        "loss_curves": loss_curves_figure(_results()),
        "mqar": mqar_figure(_board()),
    }


def test_every_registered_layer_has_its_own_colour_and_marker():
    styles = [(layer_style(n)["color"], layer_style(n)["marker"]) for n in LAYERS]
    assert len(set(styles)) == len(LAYERS)
    first = LAYERS[: len(PALETTE)]  # as many layers as colours: no colour is shared
    assert len({layer_style(n)["color"] for n in first}) == len(first)
    # a layer that is not registered gets a style of its own, stable between calls
    assert layer_style("not_a_layer") == layer_style("not_a_layer")
    assert (layer_style("not_a_layer")["color"], layer_style("not_a_layer")["marker"]) not in set(
        styles
    )


def test_each_layer_is_drawn_in_its_style_in_every_plot():
    seen: dict[str, set] = {}
    for name, fig in _figures().items():
        drawn = [line for ax in fig.axes for line in ax.get_lines()]
        assert {line.get_label() for line in drawn} == set(LAYERS), name
        for line in drawn:
            style = layer_style(line.get_label())
            assert to_rgba(line.get_color()) == to_rgba(style["color"]), (name, line.get_label())
            assert line.get_marker() == style["marker"], (name, line.get_label())
            seen.setdefault(line.get_label(), set()).add((line.get_color(), line.get_marker()))
        (legend,) = fig.legends
        shown = {text.get_text() for text in legend.get_texts()}
        assert set(LAYERS) <= shown, name  # every layer once, in the figure's one legend
        assert len(legend.get_texts()) == len(shown)
    assert all(len(styles) == 1 for styles in seen.values())


@pytest.mark.parametrize("name", ["length_generalisation", "loss_curves", "mqar"])
def test_legend_covers_no_panel(name):
    fig = _figures()[name]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert box.width > 0 and box.height > 0
    inside = fig.bbox
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0, "legend clipped"
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), f"legend over {ax.get_title()}"
        # nor over the panel's tick labels and axis titles
        assert not box.overlaps(ax.get_tightbbox(renderer)), f"legend over {ax.get_title()}"


def test_write_plots_writes_every_plot(tmp_path):
    written = write_plots(_board(), _results(), tmp_path)
    assert sorted(written) == ["length_generalisation.png", "loss_curves.png", "mqar_state.png"]
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
