"""The networks behind the Forecaster: the recurrent forecaster, DLinear, the closed-form
baselines, RevIN and the shared input layout."""
