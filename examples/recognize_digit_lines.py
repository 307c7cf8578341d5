"""Issue 22, digit lines: a Recognizer (CTC or transducer) on lines of handwritten digits.

    OMP_NUM_THREADS=1 .venv/bin/python examples/recognize_digit_lines.py ctc
    OMP_NUM_THREADS=1 .venv/bin/python examples/recognize_digit_lines.py transducer

Train lines from train images, validation lines from val images (the best validation CER's
weights are kept), test lines from test images only.
"""

import json
import sys
import time

import torch

from statewise import kernels
from statewise.estimators.recognize import Recognizer
from statewise.tasks.digit_lines import N_LABELS, digit_lines

head = sys.argv[1]
config = dict(
    encoder="lstm",
    head=head,
    bidirectional=True,
    d_model=64,
    n_layers=2,
    mlp_ratio=2.0,
    n_labels=N_LABELS,
    batch_size=32,
    lr=3e-3,
    weight_decay=0.01,
    seed=0,
)
budget_s = 450
train, val, test = (
    digit_lines("train", 8000, 0),
    digit_lines("val", 300, 1),
    digit_lines("test", 1000, 2),
)
start = time.perf_counter()
model = Recognizer(**config).fit(
    train.features, train.labels, val=(val.features, val.labels), budget_s=budget_s, progress=False
)
fit_s = time.perf_counter() - start
start = time.perf_counter()
scores = model.evaluate(test.features, test.labels)
eval_s = time.perf_counter() - start
beam = model.evaluate(test.features, test.labels, beam=8) if head == "ctc" else None
print(
    json.dumps(
        dict(
            config=config,
            budget_s=budget_s,
            train_lines=len(train),
            test_lines=len(test),
            steps=model.history[-1]["step"],
            fit_s=round(fit_s, 1),
            eval_s=round(eval_s, 1),
            val_cer=[h["val_cer"] for h in model.history if "val_cer" in h],
            test=scores,
            test_beam8=beam,
            threads=torch.get_num_threads(),
            backend=kernels.current(),
        ),
        indent=1,
    )
)
