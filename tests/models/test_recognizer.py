"""The recogniser models: their losses against brute-force enumeration (all CTC paths, all
transducer alignments), greedy transducer decoding against the argmax walk through the
teacher-forced lattice, streaming against decoding the parallel encoder output, padding
per sequence, and the bidirectional block against torch.nn.LSTM(bidirectional=True)."""

from __future__ import annotations

import pytest
import torch

from statewise.errors import ArgumentError
from statewise.models.config import ModelConfig
from statewise.models.encoder import BidirectionalBlock, SequenceEncoder
from statewise.models.recognizer import BLANK, CTCRecognizer, TransducerRecognizer
from tests.layers.test_bidirectional import _copy_lstm_weights
from tests.ops.test_ctc_decode import labelling_log_probs
from tests.ops.test_transducer import enumerated_log_likelihood

F, V, D = 3, 4, 8
F64 = dict(rtol=1e-9, atol=1e-10)


def config(layer: str = "lstm", n_layers: int = 1, **kwargs) -> ModelConfig:
    return ModelConfig(
        layer=layer,
        d_model=D,
        n_layers=n_layers,
        vocab_size=kwargs.pop("vocab_size", 0),
        input_dim=F,
        head="classifier",
        n_classes=V,
        mlp_ratio=kwargs.pop("mlp_ratio", 0),
        **kwargs,
    )


def ctc(bidirectional: bool = False, seed: int = 0) -> CTCRecognizer:
    torch.manual_seed(seed)
    return CTCRecognizer(config(), bidirectional).double().eval()


def transducer(
    layer: str = "lstm", bidirectional: bool = False, seed: int = 0, cap: int = 4
) -> TransducerRecognizer:
    torch.manual_seed(seed)
    model = TransducerRecognizer(
        config(layer, n_layers=2, mlp_ratio=2.0),
        config(layer, vocab_size=V),
        bidirectional,
        max_symbols_per_frame=cap,
    )
    return model.double().eval()


def frames(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, F, generator=torch.Generator().manual_seed(seed)).double()


def test_ctc_loss_equals_enumeration_of_all_paths_per_label():
    model = ctc()
    x = frames(2, 4)
    lengths, label_lengths = torch.tensor([4, 3]), torch.tensor([2, 1])
    labels = torch.tensor([[1, 3], [2, 0]])
    log_probs = model(x, lengths)
    expected = []
    for b in range(2):
        totals = labelling_log_probs(log_probs[b, : lengths[b]].detach(), BLANK)
        wanted = tuple(labels[b, : label_lengths[b]].tolist())
        expected.append(-totals[wanted] / int(label_lengths[b]))
    loss = model.loss(x, lengths, labels, label_lengths)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64).mean(), **F64)


def test_transducer_loss_equals_enumeration_of_all_alignments_per_label():
    model = transducer()
    x = frames(3, 4)
    lengths, label_lengths = torch.tensor([4, 2, 3]), torch.tensor([2, 1, 0])
    labels = torch.tensor([[1, 3], [2, 0], [0, 0]])
    logp = model(x, lengths, labels).log_softmax(-1)
    expected = [
        -enumerated_log_likelihood(
            logp[b], labels[b, : label_lengths[b]].tolist(), int(lengths[b]), BLANK
        )
        / max(1, int(label_lengths[b]))
        for b in range(3)
    ]
    loss = model.loss(x, lengths, labels, label_lengths)
    torch.testing.assert_close(loss, torch.stack(expected).mean(), **F64)


@pytest.mark.parametrize("layer", ["lstm", "retnet"])
def test_teacher_forced_lattice_equals_stepping_the_prediction_network(layer):
    model = transducer(layer)
    x, lengths = frames(2, 3), torch.tensor([3, 3])
    labels = torch.tensor([[1, 3, 2], [2, 2, 1]])
    logits = model(x, lengths, labels)
    encoded = model.joiner.encoder_proj(model.encoder(x))
    state, predicted = model.prediction_start(2, x)
    for u in range(4):
        torch.testing.assert_close(
            logits[:, :, u], model.joiner(encoded, predicted.unsqueeze(1)), **F64
        )
        if u < 3:
            state, predicted = model.prediction_step(labels[:, u], state)


def argmax_walk(logits: torch.Tensor, n_frames: int, cap: int) -> list[int]:
    """Greedy decoding read off the teacher-forced lattice logits (T, U+1, V) of the
    decoded labels themselves: from (t, u), the argmax is a blank (next frame) or the next
    label; after ``cap`` labels on one frame, the next frame."""
    t = u = on_frame = 0
    labels = []
    while t < n_frames:
        best = int(logits[t, u].argmax())
        if best == BLANK or on_frame == cap:
            t, on_frame = t + 1, 0
        else:
            labels.append(best)
            u, on_frame = u + 1, on_frame + 1
    return labels


@pytest.mark.parametrize("cap", [1, 2])
def test_greedy_decoding_follows_the_argmax_walk_of_the_teacher_forced_lattice(cap):
    model = transducer(cap=cap, seed=3)
    x, lengths = frames(3, 6), torch.tensor([6, 4, 1])
    decoded = model.decode(x, lengths)
    assert sum(map(len, decoded)) > 3  # a random model emits labels: the walk is exercised
    width = max(1, max(map(len, decoded)))
    labels = torch.tensor([row + [1] * (width - len(row)) for row in decoded])
    logits = model(x, lengths, labels)
    for b in range(3):
        assert decoded[b] == argmax_walk(logits[b], int(lengths[b]), cap)
    assert all(len(row) <= cap * n for row, n in zip(decoded, lengths.tolist()))


@pytest.mark.parametrize("layer", ["lstm", "mingru"])
def test_streaming_frame_by_frame_equals_decoding_the_parallel_encoder_output(layer):
    model = transducer(layer, seed=5)
    x = frames(3, 7, seed=2)
    decoded = model.decode(x, torch.tensor([7, 7, 7]))
    assert sum(map(len, decoded)) > 3
    stream, streamed = model.init_stream(3), [[], [], []]
    for t in range(7):
        emitted, stream = model.stream_step(x[:, t], stream)
        for row, labels in zip(streamed, emitted):
            row += labels
    assert streamed == decoded


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("head", ["ctc", "transducer"])
def test_a_padded_batch_decodes_each_row_as_alone(head, bidirectional):
    model = ctc(bidirectional) if head == "ctc" else transducer(bidirectional=bidirectional)
    x, lengths = frames(3, 6, seed=4), torch.tensor([6, 3, 5])
    padded = x.clone()
    padded[1, 3:] = 1e3  # what padding holds must not matter
    beams = (1, 3) if head == "ctc" else (None,)
    for beam in beams:
        extra = () if beam is None else (beam,)
        together = model.decode(padded, lengths, *extra)
        alone = [
            model.decode(x[b : b + 1, :n], lengths[b : b + 1], *extra)[0]
            for b, n in enumerate(lengths.tolist())
        ]
        assert together == alone


def test_a_padded_batch_has_the_loss_of_each_row_alone():
    x, lengths = frames(2, 5, seed=6), torch.tensor([5, 3])
    labels, label_lengths = torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1])
    for model in (ctc(bidirectional=True), transducer(bidirectional=True)):
        together = model.loss(x, lengths, labels, label_lengths)
        alone = [
            model.loss(
                x[b : b + 1, :n],
                lengths[b : b + 1],
                labels[b : b + 1, :u],
                label_lengths[b : b + 1],
            )
            for b, (n, u) in enumerate(zip(lengths.tolist(), label_lengths.tolist()))
        ]
        torch.testing.assert_close(together, torch.stack(alone).mean(), **F64)


def test_the_causal_encoder_ignores_later_frames_the_bidirectional_one_reads_them():
    torch.manual_seed(0)
    x = frames(1, 6)
    later = x.clone()
    later[0, 4:] += 1.0
    for bidirectional in (False, True):
        encoder = SequenceEncoder(config(n_layers=2), bidirectional).double()
        change = (encoder(x) - encoder(later))[0, :4].abs().max()
        assert (change > 1e-6) == bidirectional


def test_a_bidirectional_lstm_block_equals_torch_bidirectional_lstm_in_the_residual_block():
    torch.manual_seed(0)
    block = BidirectionalBlock(config(), 0).double()
    reference = torch.nn.LSTM(D, D, batch_first=True, bidirectional=True).double()
    _copy_lstm_weights(block.mixer, reference)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    got, _ = block(x)
    both, _ = reference(block.norm_1(x))
    torch.testing.assert_close(got, x + block.merge(both), **F64)
    fresh = BidirectionalBlock(config(), 0)
    assert not torch.equal(
        fresh.mixer.forward_layer.weight_ih, fresh.mixer.backward_layer.weight_ih
    )


def test_a_bidirectional_encoder_refuses_to_step_and_stream():
    model = transducer(bidirectional=True)
    with pytest.raises(ArgumentError, match="cannot step"):
        model.stream_step(frames(1, 1)[:, 0], model.init_stream(1))
    with pytest.raises(ArgumentError, match="max_symbols_per_frame"):
        TransducerRecognizer(config(), config(vocab_size=V), max_symbols_per_frame=0)
