"""Forecaster: fit / predict / evaluate / cross_validation / save / load for users who do not
build models, on arrays or on long-format DataFrames. The methods dispatch on the type of
what they are given.

    from statewise import Forecaster
    f = Forecaster(input_len=96, horizon=24).fit(train, val, budget_s=120)   # numpy / torch
    future = f.predict(train[-96:])              # (24,) in the units of ``train``

    f = Forecaster(input_len=96, horizon=24).fit(df)   # unique_id, ds, y (+ covariates)
    f.predict(level=[80, 95])                    # unique_id, ds, lru, lru-lo-95, ..., lru-hi-95
    cv = f.cross_validation(df, h=24, n_windows=3)

Under the hood (training.py): a network maps a window of L = input_len steps to the
parameters of a distribution for each of the H = horizon steps ahead (losses.py): by
default a Student-t, trained by negative log-likelihood, whose mean is the point forecast.
Windows are cut per series, each series scaled by its own training statistics (``scaler``);
the default network is a block stack of "lru" layers (a diagonal linear recurrence with a
stable, near-1 eigenvalue initialisation, the registered relative of S4, fast on CPU).

Each context window is shifted by its last value before the network and the forecast
shifted back (``subtract_last``, the "NLinear" trick of Zeng et al. 2023), unless RevIN
(``revin=True``) normalises the windows instead; both make the model robust to level shifts
between training and test periods.

Arrays: one series (N,) or (N, C); with C > 1, ``mode`` chooses one C-variate sequence
("channel_mixing", the default) or C univariate sequences through shared weights
("channel_independent"). DataFrames: every series is one univariate sequence through one
global model, with covariates, missing values and series of different lengths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from statewise.errors import ArgumentError, ArgumentTypeError, CheckpointError, DataError
from statewise.estimators.fit import (
    NotFittedError,
    check_limits,
    unchanged_on_error,
)
from statewise.estimators.forecast.arrays import (
    array_panel,
    as_contexts,
    as_series,
    context_inputs,
    full_context_windows,
)
from statewise.estimators.forecast.calendar import season_of
from statewise.estimators.forecast.dataframe import FrameData, fit_frame
from statewise.estimators.forecast.frame import forecast_frame, is_dataframe, timestamps
from statewise.estimators.forecast.losses import Family, check_levels, make_family
from statewise.estimators.forecast.options import check_h, forecaster_options
from statewise.estimators.forecast.panel import Panel
from statewise.estimators.forecast.training import (
    build_network,
    distribution,
    fit_network,
    forecast,
    forecast_columns,
    mean_loss,
)
from statewise.estimators.saved import SavedEstimator
from statewise.models.forecast.inputs import ForecastSpec
from statewise.tasks.forecast import series_statistics

__all__ = ["Forecaster", "NotFittedError"]

_ARRAY_SEASON = 24  # seasonal naive on arrays: hourly data's day, as tasks.forecast


class Forecaster(SavedEstimator):
    """Forecast the next ``horizon`` values of series from their last ``input_len`` values.

    Options (docs/forecasting.md): layer (a registered layer, "dlinear", "seasonal_naive" or
    "ridge"), loss ("studentt" | "normal" | "quantile" | "negbin" | "mse"), levels (of the
    quantile loss), scaler ("standard" | "robust" | None), mode, revin, subtract_last,
    patch_len / patch_stride, linear_skip, series_embedding_dim, futr/hist/stat_exog_list,
    calendar, freq, alias (the name of the forecast column), season_length (seasonal
    naive), moving_avg (DLinear's kernel), ridge_lam; other keywords go to ModelConfig.
    """

    kind = "Forecaster"
    files = ("forecaster.json", "model.safetensors", "data.safetensors")

    def __init__(
        self,
        layer: str = "lru",
        input_len: int = 96,
        horizon: int = 24,
        *,
        d_model: int = 64,
        n_layers: int = 2,
        batch_size: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        subtract_last: bool | None = None,
        seed: int = 0,
        loss: str | None = None,
        levels: Sequence[float] = (80, 95),
        scaler: str | None = "standard",
        mode: str = "channel_mixing",
        revin: bool = False,
        patch_len: int = 0,
        patch_stride: int | None = None,
        linear_skip: bool = False,
        series_embedding_dim: int = 0,
        futr_exog_list: Sequence[str] = (),
        hist_exog_list: Sequence[str] = (),
        stat_exog_list: Sequence[str] = (),
        calendar: bool = True,
        freq: str | int | None = None,
        alias: str | None = None,
        season_length: int | None = None,
        moving_avg: int = 25,
        ridge_lam: float = 1e-3,
        **model_kwargs: Any,
    ) -> None:
        given = {k: v for k, v in locals().items() if k != "self"}
        self.options = forecaster_options(**given)
        self.input_len, self.horizon = input_len, horizon
        self.family: Family = make_family(self.options["loss"], self.options["levels"])
        self.model: torch.nn.Module | None = None
        self.spec: ForecastSpec | None = None
        self.frame: FrameData | None = None  # fitted on a DataFrame
        self.shift: torch.Tensor | None = None  # fitted on an array: (C,) statistics
        self.scale: torch.Tensor | None = None
        self.history: list[dict[str, float]] = []
        self.tokens_per_s: float | None = None

    @property
    def name(self) -> str:
        """The forecast column's name: ``alias``, else the layer's name."""
        return self.options["alias"] or self.options["layer"]

    # ---- training ------------------------------------------------------------------------

    @unchanged_on_error
    def fit(
        self,
        train: Any,
        val: Any = None,
        *,
        static_df: Any = None,
        val_size: int = 0,
        epochs: int | None = None,
        max_steps: int | None = None,
        budget_s: float | None = None,
        progress: bool = True,
    ) -> Forecaster:
        """Train on ``train``: an array (N,) or (N, C) (then ``val`` an array of the same
        channels), or a long DataFrame (unique_id, ds, y, covariates; then ``static_df`` for
        stat_exog_list, and ``val_size`` > 0 holds out the last val_size rows of every
        series for validation). Stops at the first of epochs / max_steps / budget_s
        (epochs=10 if none is given); with validation data, the weights of the best
        validation score (measured after every epoch and at the end) are kept."""
        check_limits(epochs, max_steps, budget_s)
        limits = {"epochs": epochs, "max_steps": max_steps, "budget_s": budget_s}
        if is_dataframe(train):
            if val is not None:
                raise ArgumentError(
                    "val: with a DataFrame, hold out the last rows of each series with "
                    "val_size= instead"
                )
            return self._fit_frame(train, static_df, val_size, limits, progress)
        if not isinstance(train, (np.ndarray, torch.Tensor)):
            raise ArgumentTypeError(
                "train must be a numpy array or torch tensor (or a long-format pandas "
                f"DataFrame with unique_id, ds, y), got {type(train).__name__}"
            )
        if static_df is not None or val_size:
            raise ArgumentError("static_df and val_size apply to a DataFrame train")
        return self._fit_array(train, val, limits, progress)

    def _fit_array(self, train: Any, val: Any, limits: dict, progress: bool) -> Forecaster:
        L, H, o = self.input_len, self.horizon, self.options
        uses_frame = [n for n in ("futr_exog_list", "hist_exog_list", "stat_exog_list") if o[n]]
        uses_frame += ["series_embedding_dim"] if o["series_embedding_dim"] else []
        if uses_frame:
            raise ArgumentError(f"{uses_frame} need a DataFrame train (unique_id, ds, y, ...)")
        series = as_series(train, "train", L + H)
        val_series = None
        if val is not None:
            val_series = as_series(val, "val", L + H)
            if val_series.shape[1] != series.shape[1]:
                raise ArgumentError(
                    f"val has {val_series.shape[1]} channels, train has {series.shape[1]}"
                )
        self._check_counts(series.numpy(), "train")
        shift, scale = series_statistics(series, o["scaler"])
        panel = array_panel(series, shift, scale, L)
        spec = self._spec(n_targets=series.shape[1])

        validation = None
        if val_series is not None:
            val_panel = array_panel(val_series, shift, scale, L)
            val_windows = full_context_windows(val_panel, H)

            def validation() -> tuple[str, float]:
                return "val_mse", self._scores(val_panel, val_windows, crps=False)["mse"]

        self.shift, self.scale, self.frame = shift, scale, None
        self._train(spec, panel, full_context_windows(panel, H), limits, progress, validation)
        return self

    def _fit_frame(
        self, df: Any, static_df: Any, val_size: int, limits: dict, progress: bool
    ) -> Forecaster:
        L, H, o = self.input_len, self.horizon, self.options
        if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
            raise ArgumentError(f"val_size must be a non-negative int, got {val_size!r}")
        if 0 < val_size < H:
            raise ArgumentError(f"val_size must be 0 or >= horizon = {H}, got {val_size}")
        data, gridded = fit_frame(df, static_df, o, val_size)
        self._check_counts(np.concatenate([r[:, 0] for r in gridded.rows]), "train['y']")
        panel = data.panel(gridded, L)
        ones = torch.ones_like(panel.lengths)
        train = panel.windows(ones, panel.lengths - val_size - H, H)
        if len(train[0]) == 0:
            raise DataError(
                f"no training window: every series needs more than horizon = {H} rows "
                f"(plus val_size = {val_size}) with some observed y"
            )
        val = panel.windows((panel.lengths - val_size).clamp_min(1), panel.lengths - H, H)
        spec = self._spec(
            n_targets=1,
            n_extra=panel.hist.shape[2] + panel.futr.shape[2],
            n_future=panel.futr.shape[2],
            observed_channel=True,
            n_series=len(data.ids),
            n_static=panel.static.shape[1],
        )

        def validate() -> tuple[str, float]:
            return "val_loss", mean_loss(self.model, self.family, panel, val, H)

        self.frame, self.shift, self.scale = data, None, None
        validation = validate if val_size else None
        self._train(spec, panel, train, limits, progress, validation, data.freq)
        return self

    def _spec(self, **sizes: Any) -> ForecastSpec:
        o = self.options
        return ForecastSpec(
            input_len=self.input_len,
            horizon=self.horizon,
            n_params=self.family.n_params,
            series_embedding_dim=o["series_embedding_dim"],
            channel_independent=o["mode"] == "channel_independent",
            revin=o["revin"],
            subtract_last=o["subtract_last"],
            patch_len=o["patch_len"],
            patch_stride=o["patch_stride"],
            linear_skip=o["linear_skip"],
            raw_location=self.family.raw_location or 0,
            **sizes,
        )

    def _train(
        self,
        spec: ForecastSpec,
        panel: Panel,
        windows: tuple[torch.Tensor, torch.Tensor],
        limits: dict[str, Any],
        progress: bool,
        validate: Any,
        freq: Any = None,
    ) -> None:
        o = self.options
        if o["layer"] == "seasonal_naive" and o["season_length"] is None:
            o["season_length"] = _ARRAY_SEASON if freq is None else season_of(freq)
        torch.manual_seed(o["seed"])
        self.spec, self.model = spec, build_network(o, spec)
        self.tokens_per_s = fit_network(
            self.model, self.family, panel, windows, o, limits, self.history, validate, progress
        )

    def _check_counts(self, values: np.ndarray, name: str) -> None:
        """loss='negbin' models counts: integers >= 0 (NaN = missing)."""
        values = values[~np.isnan(values)]
        if self.options["loss"] == "negbin" and ((values < 0) | (values != np.round(values))).any():
            raise DataError(f"{name}: loss='negbin' needs counts (integers >= 0)")

    # ---- inference -----------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self,
        context: Any = None,
        *,
        h: int | None = None,
        futr_df: Any = None,
        level: Sequence[float] | None = None,
        static_df: Any = None,
    ) -> Any:
        """Arrays: forecast from ``context`` of shape (input_len,), (input_len, C),
        (N, input_len) or (N, input_len, C) -> (horizon,), (horizon, C), (N, horizon),
        (N, horizon, C), numpy or torch like ``context``, in the original units (the point
        forecast); with ``level``, a dict of such arrays keyed like the DataFrame's columns
        (``self.name``, ``<name>-lo-<level>``, ``<name>-hi-<level>``).

        DataFrames: forecast the next ``h`` (<= horizon, default horizon) steps after the
        end of every series of the training frame, or of ``context`` if it is a DataFrame
        of history; ``futr_df`` holds the future-known covariates for those steps; ``level``
        (e.g. [80, 95]) adds interval columns. Returns a DataFrame: unique_id, ds, the
        point column (``self.name``) and ``<name>-lo-<level>`` / ``<name>-hi-<level>``."""
        self._require_fit("predict")
        if self.frame is None:
            if h is not None or futr_df is not None or static_df is not None:
                raise ArgumentError(
                    "h, futr_df and static_df apply to a model fitted on a DataFrame"
                )
            return self._predict_array(context, level)
        if context is not None and not is_dataframe(context):
            raise ArgumentTypeError(
                "context: this model was fitted on a DataFrame; pass a DataFrame of history "
                f"(unique_id, ds, y) or nothing, got {type(context).__name__}"
            )
        h = check_h(h, self.horizon)
        levels = () if level is None else check_levels(level)
        gridded = self.frame.tail if context is None else self.frame.grid(context, "context")
        self._check_series(gridded.ids)
        panel = self.frame.panel(gridded, self.input_len, static_df, futr_df, self.horizon, h)
        windows = (torch.arange(len(gridded.ids)), panel.lengths)
        params = forecast(self.model, self.family, panel, windows, self.horizon)[:, :h, 0]
        stamps = [
            timestamps(start, h, self.frame.freq, len(rows))
            for start, rows in zip(gridded.starts, gridded.rows)
        ]
        return forecast_frame(
            gridded.ids, stamps, forecast_columns(self.family, self.name, params, levels)
        )

    def _predict_array(self, context: Any, level: Sequence[float] | None) -> Any:
        x, restore = as_contexts(context, self.input_len, int(self.shift.shape[0]))
        self.model.eval()
        inputs = context_inputs((x - self.shift) / self.scale, self.horizon)
        params = distribution(self.model, self.family, inputs).double()
        params = self.family.affine(params, self.shift, self.scale)  # (N, H, C, P), data units
        if level is None:
            return restore(self.family.mean(params))
        columns = forecast_columns(self.family, self.name, params, check_levels(level))
        return {name: restore(values) for name, values in columns.items()}

    def _check_series(self, ids: np.ndarray) -> None:
        if self.spec.series_embedding_dim and not np.isin(ids, self.frame.ids).all():
            unknown = [i for i in ids.tolist() if i not in set(self.frame.ids.tolist())]
            raise DataError(
                f"series {unknown[:5]} were not in the training frame: a model with "
                "series_embedding_dim > 0 has no embedding for them"
            )

    @torch.no_grad()
    def evaluate(self, series: Any, *, static_df: Any = None) -> dict[str, float]:
        """Scores over all windows of ``series`` with a full context (the first input_len
        rows of each series are context only), in the units scaled by the training
        statistics: mse, mae and, for a probabilistic loss, crps. ``series``: an array
        (N,) or (N, C) for a model fitted on one, a long DataFrame for a model fitted on
        DataFrames."""
        self._require_fit("evaluate")
        L, H = self.input_len, self.horizon
        if self.frame is None:
            data = as_series(series, "series", L + H)
            if data.shape[1] != self.shift.shape[0]:
                raise ArgumentError(
                    f"series has {data.shape[1]} channels, the model was fitted on "
                    f"{self.shift.shape[0]}"
                )
            panel = array_panel(data, self.shift, self.scale, L)
        elif not is_dataframe(series):
            raise ArgumentTypeError("series: this model was fitted on a DataFrame; pass one")
        else:
            gridded = self.frame.grid(series, "series")
            self._check_series(gridded.ids)
            panel = self.frame.panel(gridded, L, static_df)
        windows = panel.windows(
            torch.full_like(panel.lengths, L), panel.lengths - H, H, need_target=True
        )
        if len(windows[0]) == 0:
            raise DataError(f"series: no window of input_len + horizon = {L + H} rows")
        return self._scores(panel, windows)

    def _scores(
        self, panel: Panel, windows: tuple[torch.Tensor, torch.Tensor], crps: bool = True
    ) -> dict[str, float]:
        params = forecast(self.model, self.family, panel, windows, self.horizon)
        target, observed = panel.targets(*windows, self.horizon)
        shift, scale = panel.shift[windows[0]][:, None], panel.scale[windows[0]][:, None]
        point = (self.family.mean(params) - shift) / scale
        weight = observed.double()
        count = weight.sum()
        error = point - target.double()
        scores = {
            "mse": float((error**2 * weight).sum() / count),
            "mae": float((error.abs() * weight).sum() / count),
        }
        if crps and self.options["loss"] != "mse":
            crps = self.family.crps(params, target.double() * scale + shift) / scale
            scores["crps"] = float((crps.nan_to_num(0.0) * weight).sum() / count)
        return scores

    def cross_validation(
        self,
        df: Any,
        h: int | None = None,
        n_windows: int = 1,
        step_size: int | None = None,
        refit: bool = False,
        *,
        static_df: Any = None,
        level: Sequence[float] | None = None,
        epochs: int | None = None,
        max_steps: int | None = None,
        budget_s: float | None = None,
        progress: bool = True,
    ) -> Any:
        """Backtest over ``n_windows`` rolling origins (statewise.estimators.forecast.cv)."""
        from statewise.estimators.forecast.cv import cross_validation

        return cross_validation(
            self,
            df,
            h,
            n_windows,
            step_size,
            refit,
            static_df=static_df,
            level=level,
            fit_kwargs={
                "epochs": epochs,
                "max_steps": max_steps,
                "budget_s": budget_s,
                "progress": progress,
            },
        )

    # ---- persistence ---------------------------------------------------------------------

    def _fitted(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"spec": dataclasses.asdict(self.spec)}
        if self.frame is not None:
            meta["frame"] = self.frame.saved()[0]
        return meta

    def _fitted_tensors(self) -> dict[str, torch.Tensor]:
        """The scaling statistics and, for a DataFrame model, what predict() continues."""
        if self.frame is None:
            return {"shift": self.shift, "scale": self.scale}
        return self.frame.saved()[1]

    def _restore(self, meta: dict[str, Any]) -> None:
        self.spec = ForecastSpec(**meta["spec"])

    def _restore_tensors(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if "frame" in meta:
            self.frame = FrameData.from_saved(meta["frame"], tensors)
        else:
            self.shift, self.scale = tensors["shift"], tensors["scale"]

    def _build(self) -> torch.nn.Module:
        return build_network(self.options, self.spec)

    @classmethod
    def load(cls, path: str | Path) -> Forecaster:
        held = {p.name for p in Path(path).iterdir()} if Path(path).is_dir() else set()
        if held == set(cls.files[:2]):
            raise CheckpointError(
                f"{path} is a Forecaster saved by an earlier statewise (before the DataFrame "
                f"API, without {cls.files[2]}); its format cannot be read any more: fit again"
            )
        return super().load(path)

    # ---- helpers -------------------------------------------------------------------------
