"""Forecast weekly Mauna Loa CO2 one year ahead with statewise's DataFrame API.

    python examples/forecast_co2.py                  # about 2 minutes on one CPU thread

Needs pandas (``pip install 'statewise[forecast]'``), statsmodels (its wheel ships the
series; statsmodels itself is not imported) and matplotlib (the figure).

What it does (docs/forecasting.md, "Worked example: CO2, one year ahead"):

1. the series as a long DataFrame: unique_id "co2", ds weekly from 1958-03-29, y in ppm
   (``builtin_series("co2")``, the 59 missing weeks linearly interpolated);
2. the last 52 weeks held out; an LRU forecaster, DLinear and seasonal naive (52 weeks)
   fitted on the rest through the same ``Forecaster`` code, each predicting the 52 weeks
   with 80% and 95% intervals, scored by ``evaluate_cv`` (MSE, MAE in ppm, interval
   coverage, CRPS);
3. the LRU forecast with its bands against the actual values, drawn to
   docs/images/forecast_co2.png;
4. ``cross_validation`` over the last 4 years (4 windows of 52 weeks, one fit on the years
   before them) for the three models, and ``evaluate_cv``'s table.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from statewise import Forecaster
from statewise.estimators.forecast import evaluate_cv
from statewise.tasks.forecast import builtin_series

HORIZON = 52  # weeks ahead: one year
INPUT_LEN = 104  # weeks of context: two years
LEVELS = [80, 95]
EPOCHS = 30  # of the training windows; about a minute for the LRU on one thread
MODELS = {  # name -> Forecaster options beside input_len and horizon
    "lru": {"d_model": 32, "n_layers": 2},  # Student-t head (the default)
    "dlinear": {},  # Student-t head
    "seasonal_naive": {},  # season 52 from the weekly ds; Gaussian of training residuals
}
ROOT = Path(__file__).resolve().parents[1]  # the repository
FIGURE = ROOT / "docs" / "images" / "forecast_co2.png"


def co2_frame() -> pd.DataFrame:
    values = builtin_series("co2")[:, 0].numpy()  # (2284,) ppm
    ds = pd.date_range("1958-03-29", periods=len(values), freq="W-SAT")
    return pd.DataFrame({"unique_id": "co2", "ds": ds, "y": values})


def overall(table: pd.DataFrame) -> pd.DataFrame:
    """evaluate_cv's rows for all series together, one row per metric."""
    rows = table[table["unique_id"] == "overall"].drop(columns="unique_id")
    return rows.set_index("metric")


def draw(train: pd.DataFrame, test: pd.DataFrame, fc: pd.DataFrame, path: Path) -> None:
    name = "lru"
    shown = train[train["ds"] >= test["ds"].min() - pd.Timedelta(weeks=4 * 52)]
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=90)
    ax.plot(shown["ds"], shown["y"], color="black", lw=1, label="history")
    for level, alpha in ((95, 0.18), (80, 0.35)):
        lo, hi = fc[f"{name}-lo-{level}"], fc[f"{name}-hi-{level}"]
        ax.fill_between(
            fc["ds"], lo, hi, color="tab:blue", alpha=alpha, lw=0, label=f"{level}% interval"
        )
    ax.plot(fc["ds"], fc[name], color="tab:blue", lw=1.5, label="forecast (mean)")
    ax.plot(test["ds"], test["y"], color="tab:red", lw=1, ls="--", label="actual (held out)")
    ax.set_ylabel("CO2 (ppm)")
    ax.set_title("Mauna Loa CO2: Forecaster('lru'), 52 weeks ahead")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    torch.set_num_threads(1)
    pd.set_option("display.width", 120)
    df = co2_frame()
    train, test = df.iloc[:-HORIZON], df.iloc[-HORIZON:]
    print(f"series: {len(df)} weeks, {df['ds'].min().date()} to {df['ds'].max().date()}")
    print(f"train: {len(train)} weeks; held out: the last {len(test)} weeks\n")

    # 1. fit on the training part, predict the held-out year with intervals
    held, forecasts = test, {}
    for name, options in MODELS.items():
        f = Forecaster(name, input_len=INPUT_LEN, horizon=HORIZON, **options)
        start = time.perf_counter()
        f.fit(train, epochs=EPOCHS, progress=False)
        seconds = time.perf_counter() - start
        print(f"{name}: fit in {seconds:.1f} s, {len(f.history)} steps")
        forecasts[name] = fc = f.predict(level=LEVELS)
        held = held.merge(fc, on=["unique_id", "ds"])
    print("\npredict(level=[80, 95]) columns:", list(forecasts["lru"].columns))
    print(forecasts["lru"].head(3).to_string(index=False, float_format="%.2f"))
    first, last = (d.date() for d in test["ds"].agg(["min", "max"]))
    print(f"\nheld out: {len(test)} weeks, {first} to {last}; scores in ppm:")
    print(overall(evaluate_cv(held)).to_string(float_format="%.4f"))

    draw(train, test, forecasts["lru"], FIGURE)
    print(f"\nfigure: {FIGURE.relative_to(ROOT)}")

    # 2. rolling-origin backtest over the last 4 years: one fit on the years before them
    cv = None
    for name, options in MODELS.items():
        f = Forecaster(name, input_len=INPUT_LEN, horizon=HORIZON, **options)
        start = time.perf_counter()
        part = f.cross_validation(
            df,
            h=HORIZON,
            n_windows=4,
            step_size=HORIZON,
            level=LEVELS,
            epochs=EPOCHS,
            progress=False,
        )
        seconds = time.perf_counter() - start
        print(f"{name}: cross_validation in {seconds:.1f} s, {len(f.history)} steps")
        cv = part if cv is None else cv.merge(part, on=["unique_id", "ds", "cutoff", "y"])
    print("\ncutoffs:", [str(c.date()) for c in cv["cutoff"].unique()])
    print(f"cross_validation: 4 windows of {HORIZON} weeks; scores in ppm:")
    print(overall(evaluate_cv(cv)).to_string(float_format="%.4f"))


if __name__ == "__main__":
    main()
