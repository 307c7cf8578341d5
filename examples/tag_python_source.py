"""Issue 22, Python source tagging: a SequenceTagger (bidirectional lstm, CRF or softmax)
on the characters of standard-library modules.

    OMP_NUM_THREADS=1 .venv/bin/python examples/tag_python_source.py crf
    OMP_NUM_THREADS=1 .venv/bin/python examples/tag_python_source.py softmax

Training: random 256-character windows of the train modules; validation: windows of the
val modules (the best validation accuracy's weights are kept); test: the test modules cut
into consecutive 256-character windows (every character once, the last partial window
dropped). Spans: scheme "runs", outside = whitespace.
"""

import json
import sys
import time

import torch

from statewise import kernels
from statewise.estimators.tag import SequenceTagger
from statewise.tasks.code_tagging import CATEGORIES, VOCAB_SIZE, WHITESPACE, tagged_split

crf = sys.argv[1] == "crf"
WINDOW = 256
config = dict(
    layer="lstm",
    bidirectional=True,
    crf=crf,
    d_model=64,
    n_layers=2,
    mlp_ratio=2.0,
    n_tags=len(CATEGORIES),
    vocab_size=VOCAB_SIZE,
    batch_size=32,
    lr=3e-3,
    weight_decay=0.01,
    seed=0,
)
budget_s = 420
train_x, train_y = tagged_split("train").windows(WINDOW, 8000, seed=0)
val_x, val_y = tagged_split("val").windows(WINDOW, 200, seed=1)
test = tagged_split("test")
n = len(test.chars) // WINDOW
test_x = test.chars[: n * WINDOW].reshape(n, WINDOW)
test_y = test.tags[: n * WINDOW].reshape(n, WINDOW)
start = time.perf_counter()
model = SequenceTagger(**config).fit(
    train_x, train_y, val=(val_x, val_y), budget_s=budget_s, progress=False
)
fit_s = time.perf_counter() - start
start = time.perf_counter()
scores = model.evaluate(test_x, test_y, scheme="runs", outside=WHITESPACE)
eval_s = time.perf_counter() - start
print(
    json.dumps(
        dict(
            config=config,
            budget_s=budget_s,
            window=WINDOW,
            train_windows=len(train_x),
            train_chars=len(tagged_split("train").chars),
            test_chars=int(test_x.size),
            steps=model.history[-1]["step"],
            fit_s=round(fit_s, 1),
            eval_s=round(eval_s, 1),
            val_error=[h["val_error"] for h in model.history if "val_error" in h],
            test=scores,
            threads=torch.get_num_threads(),
            backend=kernels.current(),
        ),
        indent=1,
    )
)
