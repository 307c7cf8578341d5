"""The ``statewise`` command: models, train, eval, generate, convert, bench, arena, plot,
serve.

Exit codes:
    0   done
    1   a bug in statewise: the traceback is printed, with a line saying so
    2   input that cannot be used (a bad config, flag, checkpoint or data file, a directory
        that another process writes, a file that cannot be read or written): one line on
        stderr, and nothing is overwritten (statewise.errors.InputError, OSError)
    3   training diverged (a non-finite loss, gradient norm, weight or activation): one
        line naming the step and the value; the checkpoints written before are kept
    130 / 143  interrupted (Ctrl-C) / terminated (SIGTERM), after saving what can be saved
Warnings (a checkpoint skipped for an older one, a stale lock taken over) are one line
each on stderr. Set STATEWISE_DEBUG=1 to see the traceback of an exit-2 or exit-3 error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from statewise import layers
from statewise.arena.cli import add_arena_parser, cmd_arena
from statewise.errors import ArgumentError, InputError, TrainingDiverged
from statewise.models.config import SEQUENCE_HEADS
from statewise.tasks.data_cli import add_data_parsers, cmd_data, cmd_tokenizer

EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3


class UsageError(ArgumentError):
    """A command line that cannot be carried out."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the usage block
        raise UsageError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="statewise", description="Recurrent sequence learning in PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("models", help="list the registered layers")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser(
        "train",
        help="train a model from a TOML config",
        description="Train from CONFIG.toml; override any key with --section.key=value, "
        "e.g. --train.steps=100 --model.layer=retnet.",
    )
    p.add_argument("config", help="the run config (TOML), e.g. examples/char_lm.toml")
    p.add_argument("--out", help="checkpoint directory (default: runs/<config name>)")
    p.add_argument(
        "--resume",
        metavar="auto|DIR",
        help="auto: continue the checkpoint in --out if there is one; "
        "DIR: continue the checkpoint in DIR",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("eval", help="evaluate a checkpoint on its validation data")
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--test-lengths",
        metavar="L1,L2,...",
        help="also the task's metric on the test split at these lengths (length "
        "generalisation: e.g. 41,64,128,256 for state tracking's accuracy, 30 for the exact "
        "match of reversing 30 digits, 20 for the CER of 20-digit lines)",
    )
    p.add_argument(
        "--test-batches", type=int, default=4, metavar="N", help="batches per test length"
    )
    p.add_argument(
        "--val-batches",
        type=int,
        metavar="N",
        help="validation batches (default: the run's train.eval_batches); more batches "
        "narrow the error bar of val_accuracy",
    )
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="also dynamic evaluation (Krause et al. 2018): read the validation text in "
        "windows, adapting the weights after scoring each; reports static and dynamic loss "
        "(the checkpoint is not changed)",
    )
    p.add_argument("--dynamic-lr", type=float, metavar="LR", help="SGD step (default 0.05)")
    p.add_argument(
        "--dynamic-decay",
        type=float,
        metavar="L",
        help="pull toward the trained weights per window, in [0, 1] (default 0.002)",
    )
    p.add_argument("--dynamic-window", type=int, metavar="N", help="tokens per window (32)")
    p.add_argument("--dynamic-rows", type=int, metavar="N", help="parallel streams (8)")
    p.add_argument("--dynamic-tokens", type=int, metavar="N", help="score the first N tokens (all)")

    p = sub.add_parser("generate", help="generate text from a language-model checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--prompt", required=True, metavar="TEXT")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stream", action="store_true", help="print tokens as they are drawn")

    p = sub.add_parser("convert", help="import weights from another library")
    p.add_argument(
        "--from",
        dest="source",
        choices=("hf", "torch"),
        required=True,
        help="hf: a transformers save_pretrained folder (Mamba, Mamba2, RecurrentGemma); "
        "torch: a saved torch.nn.LSTM/GRU/RNN state dict",
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("--out", required=True, metavar="CKPT")
    p.add_argument(
        "--nonlinearity",
        choices=("tanh", "relu"),
        default="tanh",
        help="--from torch: the RNN's nonlinearity (a state dict does not say)",
    )
    p.add_argument(
        "--batch-first",
        action="store_true",
        help="--from torch: the converted module takes (batch, time, features)",
    )

    p = sub.add_parser("bench", help="benchmarks (see docs/performance.md)")
    bench = p.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    p = bench.add_parser(
        "speed",
        help="tokens/s, step latency and peak memory of layers, against this machine's "
        "GEMM and bandwidth limits and (--peers) other implementations",
    )
    p.add_argument(
        "--layers",
        metavar="A,B,...",
        help="registered layer names (default: lstm,mingru,rglru,mamba,retnet,mamba2,mlstm)",
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-lens", metavar="T1,T2,...", default="256,1024")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per number (median)")
    p.add_argument("--peers", action="store_true", help="also time the peer implementations")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="bfloat16: also time each layer under bfloat16 autocast and report the speed-up",
    )
    p.add_argument("--json", metavar="FILE", help="write every number to FILE as JSON")
    _backend_flag(p)
    p.add_argument("--quick-machine", action="store_true", help=argparse.SUPPRESS)
    p = bench.add_parser(
        "targets",
        help="run the shapes the speed targets need and print PASS/MISS per target",
    )
    p.add_argument(
        "--layers", metavar="A,B,...", help="only the targets of these layers ('scan': the scan)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed calls per number (median)")
    p.add_argument("--json", metavar="FILE", help="write the table and every measurement as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the target table as Markdown")
    _backend_flag(p)
    p.add_argument("--quick-machine", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: tiny shapes
    _add_bench_serve_parser(bench)
    _add_bench_fused_parser(bench)
    _add_bench_forecast_parser(bench)
    add_arena_parser(sub)
    add_data_parsers(sub)

    p = sub.add_parser(
        "plot",
        help="draw the curves of one or more runs into one PNG",
        description="Training loss, validation loss, learning rate and tokens/s against "
        "steps, and loss against training time, of each RUN_DIR (its newest checkpoint's "
        "metrics.jsonl), overlaid. Reads the runs only.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (train --out)")
    p.add_argument("--out", default="curves.png", metavar="FILE.png", help="default curves.png")
    _add_serve_parser(sub)
    return parser


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a language-model checkpoint over OpenAI-compatible HTTP",
        description="An OpenAI-compatible HTTP server (docs/serving.md) over the batching "
        "engine; needs the extra: pip install 'statewise[serve]'. SIGTERM drains: new "
        "requests get 503, running ones finish within --grace-s, then it exits 0.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--model-name", metavar="ID", help="the model id (default: DIR's name)")
    p.add_argument("--max-batch", type=int, default=32, metavar="N", help="state slots (32)")
    p.add_argument("--max-prompt-tokens", type=int, default=4096, metavar="N", help="(4096)")
    p.add_argument("--max-tokens-limit", type=int, default=4096, metavar="N", help="(4096)")
    p.add_argument("--state-cache-mb", type=float, default=64.0, metavar="M", help="(64)")
    p.add_argument("--grace-s", type=float, default=10.0, metavar="S", help="after SIGTERM (10)")
    p.add_argument(
        "--max-waiting",
        type=int,
        default=1024,
        metavar="N",
        help="requests that may wait for a free slot; more get 429 (1024)",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=64.0,
        metavar="M",
        help="largest request body; larger ones get 413 (64)",
    )
    p.add_argument(
        "--session-dir",
        metavar="D",
        help='keep named sessions (a request\'s "session" field) as files in D',
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "int8"),
        default="float32",
        help="weights of the projections: float32 (default), bfloat16, or int8 with a scale "
        "per output channel; states stay float32 (docs/serving.md)",
    )
    p.add_argument(
        "--decode",
        choices=("auto", "fused", "torch"),
        default="auto",
        help="decode step: the fused numba step up to the batch size where PyTorch's is "
        "faster, measured at start (auto, default), always fused, or always PyTorch",
    )


def _backend_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=("torch", "numba", "both"),
        help="kernel backend of our layers (default: the current one, see statewise.kernels); "
        "both: run each under torch and numba and report numba/torch",
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``), raised where the program is, so that the same
    clean-up runs as for Ctrl-C: ``train`` saves a checkpoint, ``arena`` keeps its cells."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals: main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    previous = warnings.showwarning
    warnings.showwarning = _warning_line
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        with _sigterm_as_interrupt(), _one_line_warnings():
            args, extra = build_parser().parse_known_args(argv)
            if extra and args.command != "train":
                raise UsageError(
                    f"statewise {args.command}: unrecognized arguments: {' '.join(extra)}"
                )
            return COMMANDS[args.command](args, extra)
    except KeyboardInterrupt as stop:
        command = " ".join(argv[:2]) if argv and argv[0] == "bench" else (argv or [""])[0]
        how = {
            "train": "continue it with --resume auto",
            "arena": "rerun the same command to resume; finished cells are kept",
            "bench forecast": "rerun the same command to resume; finished cells are kept",
        }.get(command, "nothing was saved")
        what = "terminated" if isinstance(stop, Terminated) else "interrupted"
        print(f"statewise: {what} ({how})", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    except (InputError, OSError) as err:
        return _one_line(err, EXIT_USAGE)
    except TrainingDiverged as err:
        return _one_line(err, EXIT_DIVERGED)
    except Exception:
        traceback.print_exc()
        print(
            "statewise: this is a bug in statewise, not a mistake in your input; please "
            "report it with the traceback above",
            file=sys.stderr,
        )
        return EXIT_BUG


def _one_line(err: Exception, code: int) -> int:
    if os.environ.get("STATEWISE_DEBUG"):
        raise err
    message = " ".join(str(err).splitlines())  # also \r, \x1e, \u2028 ... in a user's text
    print(
        message if message.startswith("statewise") else f"statewise: error: {message}",
        file=sys.stderr,
    )
    return code


def _warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Warnings as one line, without the source line Python shows by default."""
    print(f"statewise: warning: {message}", file=file or sys.stderr)


def cmd_models(args: argparse.Namespace, extra: list[str]) -> int:
    rows = [
        {
            "name": n,
            "family": (i := layers.info(n)).family,
            "modes": list(i.modes),
            "state_size": i.state_size,
            "paper": i.paper,
        }
        for n in layers.names()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [["name", "family", "modes", "state per layer (d = d_model)", "paper"]]
    table += [
        [r["name"], r["family"], ", ".join(r["modes"]), r["state_size"], r["paper"]] for r in rows
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from statewise.train.config import load_config
    from statewise.train.trainer import train

    overrides = _overrides(extra)
    config = load_config(args.config, overrides)
    if args.resume not in (None, "auto"):
        if args.out and Path(args.out) != Path(args.resume):
            raise UsageError("statewise train: give either --out or --resume DIR, not both")
        out, resume = Path(args.resume), True
        from statewise.train import checkpoint

        if not checkpoint.is_checkpoint(out):
            raise UsageError(f"statewise train: --resume {out}: not a statewise checkpoint")
    else:
        out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
        resume = args.resume == "auto"
    final = train(config, out, resume=resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 reports
        return 0
    print(
        f"trained {config.model.layer} to step {final.get('step')}: "
        + ", ".join(
            f"{k} {v:.4f}"
            for k, v in final.items()
            if k in ("loss", "val_loss", "val_bits_per_char", "val_bits_per_byte", "val_accuracy")
        )
        + f"; checkpoint in {out}"
    )
    return 0


def _overrides(extra: list[str]) -> list[str]:
    """``--section.key=value`` and ``--section.key value`` into ``section.key=value``."""
    out, i = [], 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--") or "." not in item.split("=")[0]:
            raise UsageError(
                f"statewise train: unrecognized argument {item!r}; overrides "
                "look like --section.key=value"
            )
        if "=" in item:
            out.append(item[2:])
        elif i + 1 < len(extra):
            out.append(f"{item[2:]}={extra[i + 1]}")
            i += 1
        else:
            raise UsageError(f"statewise train: {item} needs a value")
        i += 1
    return out


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from statewise.tasks.config import build_task
    from statewise.train import checkpoint
    from statewise.train.evaluate import mean_over_lengths
    from statewise.train.objectives import objective_for

    lengths = []
    if args.test_lengths is not None:
        lengths = _csv(args.test_lengths, "--test-lengths", int, "statewise eval")
        if min(lengths) < 1:
            raise UsageError(f"statewise eval: --test-lengths must be >= 1, got {lengths}")
    for flag, n in (("--test-batches", args.test_batches), ("--val-batches", args.val_batches)):
        if n is not None and n < 1:
            raise UsageError(f"statewise eval: {flag} must be >= 1, got {n}")
    saved = checkpoint.read(args.checkpoint)  # one checkpoint, however the run moves on
    config = saved.config()
    if config.model.head not in ("lm", *SEQUENCE_HEADS):
        raise UsageError(
            f"statewise eval: {args.checkpoint} holds a {config.model.head!r} model; eval "
            f"measures the models statewise train fits (heads lm, {', '.join(SEQUENCE_HEADS)})"
        )
    if args.dynamic and config.model.head != "lm":
        raise UsageError("statewise eval: --dynamic is for language models (model.head 'lm')")
    model, step = saved.model(), saved.step
    task = build_task(config.data, config.train.seed, _run_tokenizer(saved, config))
    objective = objective_for(config.model, task)
    batches = args.val_batches or config.train.eval_batches
    result = {
        "step": step,
        "layer": config.model.layer,
        "task": config.data.task,
        **objective.evaluate(model, task, config.train.batch_size, batches),
    }
    metric = objective.metric
    if lengths:
        by_length = objective.test(model, task, lengths, config.train.batch_size, args.test_batches)
        result[f"test_{metric}"] = {str(n): value for n, value in by_length.items()}
        result[f"test_{metric}_mean"] = mean_over_lengths(by_length, objective.no_answer)
    if args.dynamic:
        result["dynamic"] = _dynamic_eval(args, model, task)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['layer']} on {result['task']} at step {step}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k.startswith("val_"))
        )
        for n, value in result.get(f"test_{metric}", {}).items():
            shown = "none: the activations overflowed" if value is None else f"{value:.4f}"
            print(f"  test {metric} at length {n}: {shown}")
        if lengths:
            overflowed = f" (a length that overflowed counts {objective.no_answer:g})" * (
                None in by_length.values()
            )
            print(f"  mean over test lengths: {result[f'test_{metric}_mean']:.4f}{overflowed}")
        if args.dynamic:
            d = result["dynamic"]
            print(
                f"  over {d['tokens']:,} validation tokens read in windows: static loss "
                f"{d['static_loss']:.4f}, dynamic loss {d['dynamic_loss']:.4f} (nats/token)"
            )
    return 0


def _dynamic_eval(args: argparse.Namespace, model: object, task: object) -> dict:
    """statewise eval --dynamic: static and dynamic loss (statewise.train.dynamic_eval)."""
    from statewise.train import dynamic_eval as dyn

    flags = {
        "window": ("--dynamic-window", args.dynamic_window, dyn.WINDOW),
        "rows": ("--dynamic-rows", args.dynamic_rows, dyn.ROWS),
        "max_tokens": ("--dynamic-tokens", args.dynamic_tokens, None),
    }
    for flag, value, _ in flags.values():
        if value is not None and value < 1:
            raise UsageError(f"statewise eval: {flag} must be >= 1, got {value}")
    lr = dyn.LR if args.dynamic_lr is None else args.dynamic_lr
    decay = dyn.DECAY if args.dynamic_decay is None else args.dynamic_decay
    if not lr >= 0 or not 0 <= decay <= 1:  # NaN fails both
        raise UsageError(
            f"statewise eval: need --dynamic-lr >= 0 and --dynamic-decay in [0, 1], "
            f"got {lr} and {decay}"
        )
    options = {k: default if v is None else v for k, (_, v, default) in flags.items()}
    settings = {**options, "lr": lr, "decay": decay}
    return {
        **settings,
        **dyn.dynamic_evaluate(model, dyn.validation_stream(task), **settings),
    }


def cmd_generate(args: argparse.Namespace, extra: list[str]) -> int:
    from statewise.infer.generate import generate_text
    from statewise.models.sampling import check_sampling
    from statewise.train import checkpoint

    if not args.prompt:
        raise UsageError("statewise generate: --prompt is empty; give at least one character")
    if args.max_new_tokens < 0:
        raise UsageError("statewise generate: --max-new-tokens must be >= 0")
    check_sampling(args.temperature, args.top_k, args.top_p)  # before the model is read
    saved = checkpoint.read(args.checkpoint)
    config = saved.config()
    tokenizer = _run_tokenizer(saved, config)
    if tokenizer is None:
        raise UsageError(
            f"statewise generate: {args.checkpoint} was trained on data.task "
            f"{config.data.task!r}, not on text; generate needs a char_lm or lm checkpoint"
        )

    model = saved.model()

    def show(text: str) -> None:
        print(text, end="", flush=True)

    if args.stream:
        show(args.prompt)
    text = generate_text(
        model,
        args.prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        on_text=show if args.stream else None,
        tokenizer=tokenizer,
    )
    print() if args.stream else print(args.prompt + text)
    return 0


def _run_tokenizer(saved: object, config: object) -> object:
    """The tokenizer of a text checkpoint (the run directory's copy; None for other tasks)."""
    from statewise.tasks.text import TEXT_TASKS
    from statewise.tasks.tokenizer import checkpoint_tokenizer

    if config.data.task not in TEXT_TASKS:
        return None
    return checkpoint_tokenizer(saved.path, config.data.tokenizer)


def cmd_serve(args: argparse.Namespace, extra: list[str]) -> int:
    import math

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError(
            "statewise serve needs FastAPI and uvicorn: pip install 'statewise[serve]'"
        ) from None
    from statewise.serve import ServeConfig, create_app, engine_from_checkpoint, make_server

    for flag, value in (
        ("--port", args.port),
        ("--max-batch", args.max_batch),
        ("--max-prompt-tokens", args.max_prompt_tokens),
        ("--max-tokens-limit", args.max_tokens_limit),
        ("--max-waiting", args.max_waiting),
    ):
        if value < (0 if flag == "--port" else 1) or value > (65535 if flag == "--port" else 2**31):
            raise UsageError(f"statewise serve: {flag} {value} is out of range")
    for flag, value in (("--state-cache-mb", args.state_cache_mb), ("--grace-s", args.grace_s)):
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"statewise serve: {flag} must be a finite number >= 0, got {value}")
    if not (math.isfinite(args.max_body_mb) and args.max_body_mb > 0):
        raise UsageError(f"statewise serve: --max-body-mb must be > 0, got {args.max_body_mb}")
    engine = engine_from_checkpoint(
        args.checkpoint,
        args.max_batch,
        args.state_cache_mb,
        session_dir=args.session_dir,
        dtype=args.dtype,
        decode=args.decode,
    )
    print(f"statewise serve: {engine.decode_path.describe()}", file=sys.stderr, flush=True)
    name = args.model_name or Path(args.checkpoint).resolve().name
    config = ServeConfig(
        name,
        args.max_prompt_tokens,
        args.max_tokens_limit,
        args.grace_s,
        max_waiting=args.max_waiting,
        max_body_bytes=int(args.max_body_mb * 2**20),
    )
    make_server(create_app(engine, config), args.host, args.port).run()
    return 0


def cmd_plot(args: argparse.Namespace, extra: list[str]) -> int:
    from statewise.train.plot import plot_runs

    plot_runs(args.runs, args.out)
    print(f"plotted {len(args.runs)} run(s) into {args.out}")
    return 0


def cmd_convert(args: argparse.Namespace, extra: list[str]) -> int:
    from statewise.convert import convert_hf
    from statewise.convert.torch_rnn import convert_torch

    if args.source == "hf":
        config = convert_hf(args.src, args.out)
    else:
        config = convert_torch(args.src, args.out, args.nonlinearity, args.batch_first)
    print(
        f"converted {args.src} into a {config.layer} model ({config.n_layers} layers, "
        f"d_model {config.d_model}); checkpoint in {args.out}"
    )
    return 0


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    from statewise.bench.machine import measure_machine
    from statewise.bench.speed import resolve_backends

    if args.bench_command == "serve":
        return _bench_serve(args)
    if args.bench_command == "fused":
        return _bench_fused(args)
    if args.bench_command == "forecast":
        return _bench_forecast(args)
    cmd = f"statewise bench {args.bench_command}"
    if args.repeats <= 0:
        raise UsageError(f"{cmd}: --repeats must be >= 1, got {args.repeats}")
    for out in (args.json, getattr(args, "markdown", None)):
        if out and not Path(out).parent.is_dir():
            raise UsageError(f"{cmd}: {out}: no directory {Path(out).parent}")
    try:
        backends = resolve_backends(args.backend)
    except ValueError as err:
        raise UsageError(f"{cmd}: --backend: {err}") from None
    if args.bench_command == "targets":
        run = _bench_targets(args, backends)
    else:
        run = _bench_speed(args, backends)
    print("measuring this machine's GEMM and memory bandwidth", file=sys.stderr, flush=True)
    result, table = run(measure_machine(quick=args.quick_machine))
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _add_bench_serve_parser(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser(
        "serve",
        help="load-test statewise serve: tokens/s, latency and memory per stream at several "
        "concurrencies, prefix cache, churn, transformers' generate (docs/serving.md)",
    )
    p.add_argument("--layers", metavar="A,B,...", help="default: mingru,lstm,mamba,rwkv")
    # sizes: None = Options()'s default (512, 4, 1,8,32,128, 2, 64, 16, 60, 500, 2048)
    p.add_argument("--d-model", type=int)
    p.add_argument("--n-layers", type=int)
    p.add_argument("--concurrency", metavar="C1,C2,...")
    p.add_argument("--requests-per-stream", type=int, metavar="N")
    p.add_argument("--max-tokens", type=int, metavar="M")
    p.add_argument("--prompt-tokens", type=int, metavar="P")
    p.add_argument("--server-threads", type=int, default=1, metavar="T", help="OMP threads (1)")
    p.add_argument("--time-cap-s", type=float, help="per phase (60)")
    p.add_argument("--churn-requests", type=int, metavar="N")
    p.add_argument("--cache-prompt-tokens", type=int, metavar="N")
    p.add_argument("--no-hf", action="store_true", help="skip transformers' generate")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE as JSON")
    p.add_argument("--quick", action="store_true", help="a small run (d_model 64, 2 layers)")


def _add_bench_fused_parser(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser(
        "fused",
        help="the fused decode step against the PyTorch step and the parameter read time, "
        "and its crossover batch size (docs/serving.md)",
    )
    p.add_argument("--layers", metavar="A,B,...", help="default: the layers with a fused step")
    p.add_argument("--d-model", type=int, default=512, help="(512)")
    p.add_argument("--n-layers", type=int, default=4, help="(4)")
    p.add_argument("--threads", type=int, default=1, help="torch and numba threads (1)")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch timed (32)")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per number (15)")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE as JSON")
    p.add_argument("--quick", action="store_true", help="the tests' small run")


def _bench_fused(args: argparse.Namespace) -> int:
    from statewise.bench.fused import Options, format_report, run_fused_bench

    cmd = "statewise bench fused"
    if args.json and not Path(args.json).parent.is_dir():
        raise UsageError(f"{cmd}: {args.json}: no directory {Path(args.json).parent}")
    if args.quick:
        opts = Options.quick()
    else:
        for flag in ("d_model", "n_layers", "threads", "max_batch", "repeats"):
            if getattr(args, flag) < 1:
                raise UsageError(f"{cmd}: --{flag.replace('_', '-')} must be >= 1")
        opts = Options(
            d_model=args.d_model,
            n_layers=args.n_layers,
            threads=args.threads,
            max_batch=args.max_batch,
            repeats=args.repeats,
        )
    if args.layers:
        opts.layers = tuple(_csv(args.layers, "--layers", str, cmd))
    _check_fusable_layers(opts.layers, cmd)
    result = run_fused_bench(opts)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _add_bench_forecast_parser(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser(
        "forecast",
        help="the long-horizon forecasting benchmark (ETT protocol): test MSE / MAE per layer "
        "and horizon beside the published ones, resumable per cell (docs/forecasting.md)",
    )
    p.add_argument("--data", required=True, metavar="CSV", help="a date column, then variates")
    p.add_argument("--horizons", metavar="H1,H2,...", help="default 96,192,336,720")
    p.add_argument(
        "--layers", metavar="A,B,...", help="default lstm,mingru,lru,mlstm,mamba,dlinear"
    )
    p.add_argument("--input-len", type=int, default=336, help="(336)")
    p.add_argument(
        "--budget-s",
        type=float,
        help="training seconds per cell (when neither limit is given: 10 epochs, at most 1200 s)",
    )
    p.add_argument("--epochs", type=int, help="epochs per cell (the first limit reached stops)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="one JSON per cell; a rerun resumes (default: "
        "runs/bench-forecast-<data>-L<input-len>)",
    )
    p.add_argument("--json", metavar="FILE", help="write the whole run to FILE as JSON")
    p.add_argument("--loss", default="studentt", help="head of the recurrent rows (studentt)")
    p.add_argument("--d-model", type=int, default=16, help="(16)")
    p.add_argument("--n-layers", type=int, default=2, help="(2)")
    p.add_argument("--patch-len", type=int, default=16, help="stride half of it; 0: no patches")
    p.add_argument("--lr", type=float, help="learning rate of the recurrent rows (1e-3)")
    p.add_argument("--dropout", type=float, default=0.3, help="dropout of the recurrent rows (0.3)")
    p.add_argument(
        "--linear-skip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add a linear forecast of the normalised context to the recurrent rows' location (on)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: all)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _bench_forecast(args: argparse.Namespace) -> int:
    """``statewise bench forecast``: build the options, run the missing cells, print the table."""
    from statewise.bench.forecast import run_forecast_bench
    from statewise.bench.forecast_options import ForecastBench
    from statewise.bench.forecast_published import format_table

    cmd = "statewise bench forecast"
    lists = {}
    if args.horizons:
        lists["horizons"] = tuple(_csv(args.horizons, "--horizons", int, cmd))
    if args.layers:
        lists["layers"] = tuple(_csv(args.layers, "--layers", str, cmd))
    bench = ForecastBench(
        data=args.data,
        input_len=args.input_len,
        budget_s=args.budget_s,
        epochs=args.epochs,
        out=args.out,
        json=args.json,
        loss=args.loss,
        d_model=args.d_model,
        n_layers=args.n_layers,
        patch_len=args.patch_len,
        lr=args.lr,
        dropout=args.dropout,
        linear_skip=args.linear_skip,
        seed=args.seed,
        threads=args.threads,
        progress=args.progress,
        **lists,
    )
    print(format_table(run_forecast_bench(bench)))
    return 0


def _check_fusable_layers(names: tuple[str, ...], cmd: str) -> None:
    from statewise import layers
    from statewise.infer.fused import fused_layer_names

    for name in names:
        if name not in layers.names():
            raise UsageError(f"{cmd}: unknown layer {name!r}")
        if name not in fused_layer_names():
            raise UsageError(f"{cmd}: layer {name!r} has no fused decode step")


def _bench_serve(args: argparse.Namespace) -> int:
    """``statewise bench serve``: check the options, run, print the table."""
    from statewise.bench.serve import Options, format_report, run_serve_bench

    cmd = "statewise bench serve"
    if args.json and not Path(args.json).parent.is_dir():
        raise UsageError(f"{cmd}: {args.json}: no directory {Path(args.json).parent}")
    sizes = (
        "d_model",
        "n_layers",
        "concurrency",
        "requests_per_stream",
        "max_tokens",
        "prompt_tokens",
        "time_cap_s",
        "churn_requests",
        "cache_prompt_tokens",
    )
    given = [k for k in sizes if getattr(args, k) is not None]
    if args.quick and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UsageError(f"{cmd}: --quick sets the sizes itself; leave out {flags}")
    opts = Options.quick() if args.quick else Options()
    for key in given:
        value = getattr(args, key)
        if key == "concurrency":
            value = _csv(value, "--concurrency", int, cmd)
        setattr(opts, key, value)
    if args.layers:
        opts.layers = _csv(args.layers, "--layers", str, cmd)
    opts.server_threads, opts.hf = args.server_threads, not args.no_hf
    try:
        opts.check()
    except ArgumentError as err:
        raise UsageError(f"{cmd}: {err}") from None
    result = run_serve_bench(opts)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any("error" in layer for layer in result["layers"]) else 0


def _bench_speed(args: argparse.Namespace, backends: list[str]) -> Callable:
    """Check the ``bench speed`` options; the run, a function of the measured machine."""
    from statewise.bench.speed import DEFAULT_LAYERS, Shape, check_layers, format_table, run_speed

    names = _csv(args.layers, "--layers", str) if args.layers else list(DEFAULT_LAYERS)
    check_layers(names)
    seq_lens = _csv(args.seq_lens, "--seq-lens", int)
    for flag, value in (("--batch", args.batch), ("--d-model", args.d_model)):
        if value <= 0:
            raise UsageError(f"statewise bench speed: {flag} must be a positive int, got {value}")
    if min(seq_lens) <= 0:
        raise UsageError("statewise bench speed: --seq-lens must be positive ints")
    shapes = [Shape(args.batch, t, args.d_model) for t in seq_lens]

    def run(machine: object) -> tuple[dict, str]:
        result = run_speed(
            names, shapes, args.repeats, machine, args.peers, backends=backends, dtype=args.dtype
        )
        result["options"] = {
            "layers": names,
            "batch": args.batch,
            "seq_lens": seq_lens,
            "d_model": args.d_model,
            "repeats": args.repeats,
            "peers": args.peers,
            "backends": backends,
            "dtype": args.dtype,
        }
        return result, format_table(result)

    return run


def _bench_targets(args: argparse.Namespace, backends: list[str]) -> Callable:
    """Check the ``bench targets`` options; the run, a function of the measured machine."""
    from statewise.bench.speed import Shape, check_layers
    from statewise.bench.target_run import run_targets
    from statewise.bench.targets import DEFAULT_SHAPES, Shapes, format_markdown, format_targets

    only = None
    if args.layers:
        only = tuple(_csv(args.layers, "--layers", str))
        check_layers([n for n in only if n != "scan"])
    shapes = DEFAULT_SHAPES
    if args.tiny:
        shapes = Shapes(
            Shape(2, 16, 16), Shape(2, 16, 32), 2, Shape(2, 32, 16), 16, 8, Shape(2, 16, 16)
        )

    def run(machine: object) -> tuple[dict, str]:
        result = run_targets(machine, backends, args.repeats, shapes, only)
        if args.markdown:
            Path(args.markdown).write_text(format_markdown(result["targets"]))
        return result, format_targets(result["targets"])

    return run


def _csv(text: str, flag: str, kind: type, command: str = "statewise bench") -> list:
    """``a,b,c`` into a non-empty list of ``kind``; one-line UsageError otherwise."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        values = [kind(item) for item in items]
    except ValueError:
        raise UsageError(f"{command}: {flag} {text!r}: not a list of {kind.__name__}s") from None
    if not values:
        raise UsageError(f"{command}: {flag} is empty")
    return values


COMMANDS = {
    "bench": cmd_bench,
    "models": cmd_models,
    "train": cmd_train,
    "eval": cmd_eval,
    "generate": cmd_generate,
    "convert": cmd_convert,
    "arena": cmd_arena,
    "data": cmd_data,
    "tokenizer": cmd_tokenizer,
    "plot": cmd_plot,
    "serve": cmd_serve,
}
