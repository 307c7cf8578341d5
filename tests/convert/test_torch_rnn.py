"""statewise convert --from torch: a torch.nn.LSTM/GRU/RNN state dict into a checkpoint."""

from __future__ import annotations

import pytest
import torch

import statewise
from statewise.cli import main

MODULES = {
    "lstm-proj-bidirectional": lambda: torch.nn.LSTM(
        5, 8, num_layers=2, proj_size=3, bidirectional=True
    ),
    "gru-no-bias": lambda: torch.nn.GRU(5, 6, num_layers=3, bias=False),
    "rnn-relu": lambda: torch.nn.RNN(5, 7, nonlinearity="relu"),
}


@pytest.mark.parametrize("name", MODULES)
def test_converted_module_equals_the_torch_module(tmp_path, capsys, name):
    torch.manual_seed(0)
    source = MODULES[name]()
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    extra = ["--nonlinearity", "relu"] if "relu" in name else []
    assert (
        main(["convert", "--from", "torch", str(path), "--out", str(tmp_path / "ck"), *extra]) == 0
    )
    assert "checkpoint in" in capsys.readouterr().out
    converted = statewise.load(tmp_path / "ck")
    assert type(converted).__name__ == type(source).__name__
    x = torch.randn(9, 4, 5)
    expected, converted_out = source(x), converted(x)
    torch.testing.assert_close(converted_out[0], expected[0], rtol=1e-5, atol=1e-6)


def test_batch_first_option(tmp_path):
    source = torch.nn.GRU(3, 4, batch_first=True)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    assert (
        main(
            [
                "convert",
                "--from",
                "torch",
                str(tmp_path / "w.pt"),
                "--out",
                str(tmp_path / "ck"),
                "--batch-first",
            ]
        )
        == 0
    )
    x = torch.randn(2, 6, 3)
    torch.testing.assert_close(statewise.load(tmp_path / "ck")(x)[0], source(x)[0])


def test_bad_inputs_give_one_clear_line(tmp_path, capsys):
    lstm = torch.nn.LSTM(3, 4, num_layers=2)
    torch.save(lstm, tmp_path / "module.pt")  # the module, not its state dict
    torch.save({"foo": torch.zeros(2)}, tmp_path / "other.pt")
    broken = lstm.state_dict()
    broken["weight_hh_l1"] = torch.zeros(16, 5)
    torch.save(broken, tmp_path / "broken.pt")
    torch.save(lstm.state_dict(), tmp_path / "ok.pt")
    (tmp_path / "exists").mkdir()
    cases = [
        ("missing.pt", "out1", "is not a file"),
        ("module.pt", "out2", "save module.state_dict()"),
        ("other.pt", "out3", "not a torch.nn.LSTM/GRU/RNN state dict"),
        ("broken.pt", "out4", "inconsistent tensors"),
        ("ok.pt", "exists", "already exists"),
    ]
    for src, out, message in cases:
        code = main(
            ["convert", "--from", "torch", str(tmp_path / src), "--out", str(tmp_path / out)]
        )
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        if out != "exists":
            assert not (tmp_path / out).exists()
