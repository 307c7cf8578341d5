"""index.html: the leaderboard tables and the plots, self-contained (relative image links)."""

from __future__ import annotations

from html import escape
from typing import Any

from statewise.arena.leaderboard import direction, model_size, overview, table
from statewise.arena.plots import PLOTS

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; }
table { border-collapse: collapse; margin-bottom: 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:nth-child(2) { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _html(head: list[str], body: list[list[str]]) -> list[str]:
    return [
        "<table>",
        "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>",
        *("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in body),
        "</table>",
    ]


def render(board: dict[str, Any], options: dict[str, Any], plots: list[str]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>statewise arena</title>',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>statewise arena: {escape(str(options.get('suite', 'custom')))}</h1>",
        f"<p>{model_size(options)}; seeds {options['seeds']}; "
        f"layers {escape(', '.join(options['layers']))}. "
        'Also as <a href="leaderboard.md">Markdown</a> and '
        '<a href="leaderboard.json">JSON</a>.</p>',
    ]
    if len(board) > 1:
        parts += ["<h2>Overview: metric (rank) per task</h2>", *_html(*overview(board))]
    for task, entry in board.items():
        parts.append(
            f"<h2>{escape(task)}: {escape(str(entry['metric']))} ({direction(entry)})</h2>"
        )
        parts += _html(*table(task, entry))
    for name in plots:
        title = PLOTS[name][0]
        parts.append(f'<h2>{escape(title)}</h2><img src="{escape(name)}" alt="{escape(title)}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
