"""The published ETTh1 multivariate numbers that ``statewise bench forecast`` prints beside
its own cells, each paper's protocol, and the text table of a run.

The numbers are MSE / MAE on the train-scaled data (input all 7 columns, output all 7).
PatchTST/64 and DLinear: Table 3 of Nie et al. (ICLR 2023), "A Time Series is Worth 64
Words" (its DLinear row is DLinear's own result, Zeng et al., AAAI 2023). xLSTMTime
(Alharthi & Mahmood, AI 2024): its per-horizon ETTh1 table could not be read here (an
image in the released code, not in the stored text of the paper), so the row has no
per-horizon numbers; its mean over the four horizons, MSE 0.408 / MAE 0.428, is quoted by
Kraus et al. 2025 (xLSTM-Mixer, Table 1), who note they could not reproduce xLSTMTime's
results and show the better, published ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Published:
    name: str
    source: str
    protocol: str
    mse: dict[int, float] = field(default_factory=dict)
    mae: dict[int, float] = field(default_factory=dict)


ETTH1 = (
    Published(
        "PatchTST/64",
        "Nie et al. 2023, Table 3",
        "input 512 (64 patches of 16, stride 8), channel-independent, RevIN, MSE loss, best "
        "epoch by validation loss; test loader drop_last=True at batch 128 (97, 1, 113, 113 "
        "of the 2785, 2689, 2545, 2161 test windows not scored)",
        {96: 0.370, 192: 0.413, 336: 0.422, 720: 0.447},
        {96: 0.400, 192: 0.429, 336: 0.440, 720: 0.468},
    ),
    Published(
        "DLinear",
        "Zeng et al. 2023, as in Nie et al. 2023, Table 3",
        "input 336, MSE loss, weights shared by the channels, no normalisation; test loader "
        "drop_last=True at batch 8 (1 test window per horizon not scored)",
        {96: 0.375, 192: 0.405, 336: 0.439, 720: 0.472},
        {96: 0.399, 192: 0.416, 336: 0.443, 720: 0.490},
    ),
    Published(
        "xLSTMTime",
        "Alharthi & Mahmood 2024; per horizon not copied, mean of the 4 horizons 0.408 / "
        "0.428 (as quoted by Kraus et al. 2025, Table 1)",
        "released code: input 512, RevIN, L1 loss, no drop_last; its validation loader reads "
        "the test split, so the kept epoch is chosen on the test windows",
    ),
)


def published_for(data: str | Path) -> tuple[Published, ...]:
    """The published rows for a data file named ETTh1 (any directory or case), else none."""
    return ETTH1 if Path(data).stem.lower() == "etth1" else ()


def _cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "not run"
    if "diverged" in result:
        return "diverged"
    return f"{result['test']['mse']:.3f} / {result['test']['mae']:.3f}"


def format_table(summary: dict[str, Any]) -> str:
    """The run as text: MSE / MAE per layer and horizon (test windows, train-scaled data),
    the published rows ("-" for a horizon the paper does not report), and the probabilistic
    check of each cell that has one."""
    horizons, layers = summary["horizons"], summary["layers"]
    cells = {(c["layer"], c["horizon"]): c for c in summary["cells"]}
    head = f"{summary['data']['name']}: input {summary['input_len']}, MSE / MAE on test"
    rows = [[layer, *(_cell(cells.get((layer, h))) for h in horizons)] for layer in layers]
    for p in published_for(summary["data"]["name"]):
        numbers = [
            f"{p.mse[h]:.3f} / {p.mae[h]:.3f}" if h in p.mse else "-" if p.mse else "not copied"
            for h in horizons
        ]
        rows.append([f"{p.name} (published)", *numbers])
    lines = [head, _columns([["model", *map(str, horizons)], *rows])]
    checks = [c for c in summary["cells"] if c.get("probabilistic")]
    if checks:
        level = checks[0]["probabilistic"]["level"]
        table = [["model", "horizon", f"cover {level}%", "CRPS", "Gaussian cover", "CRPS"]]
        for c in checks:
            p = c["probabilistic"]
            table.append(
                [c["layer"], str(c["horizon"])]
                + [f"{p[k]:.3f}" for k in ("coverage", "crps", "gaussian_coverage")]
                + [f"{p['gaussian_crps']:.3f}"]
            )
        lines += ["", "Probabilistic check on the test windows", _columns(table)]
    return "\n".join(lines)


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)
