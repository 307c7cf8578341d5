"""The arena's plots: drawn when their data is there, skipped (False) when it is not."""

from __future__ import annotations

from statewise.arena.plots import mqar_vs_state


def _rows(*values):
    return [
        {"layer": f"l{i}", "state_floats": 100 * (i + 1), "value": v} for i, v in enumerate(values)
    ]


def test_mqar_plot_takes_every_mqar_task(tmp_path):
    board = {
        "mqar": {"metric": "val_accuracy", "rows": _rows(0.9, 0.5)},
        "mqar_128x8": {"metric": "val_accuracy", "rows": _rows(0.4, None)},
        "parity": {"metric": "test_accuracy", "rows": _rows(0.5)},
    }
    assert mqar_vs_state(board, tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only_8 = {"mqar_128x8": board["mqar_128x8"]}
    assert mqar_vs_state(only_8, tmp_path / "8.png")


def test_no_mqar_no_plot(tmp_path):
    assert not mqar_vs_state({"parity": {"metric": "x", "rows": _rows(0.5)}}, tmp_path / "p.png")
    assert not mqar_vs_state({"mqar": {"metric": "x", "rows": _rows(None)}}, tmp_path / "n.png")
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "n.png").exists()
