"""Placeholder: torch.nn-compatible LSTM/GRU/RNN (being written)."""


class LSTM:  # placeholder
    pass


class GRU:  # placeholder
    pass


class RNN:  # placeholder
    pass
