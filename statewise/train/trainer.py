"""The training loop: AdamW, warm-up + cosine, gradient clipping, checkpoints, exact resume.

Resuming is exact: the batch of step s depends only on (seed, s) (see tasks.base), and the
checkpoint carries the weights, the optimizer moments and the RNG state, so a run stopped
at any point and resumed with ``resume=True`` ends with the same weights and losses as a
run that was never stopped.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch

from statewise.errors import CheckpointError, ConfigError, NonFiniteError
from statewise.models import build_model
from statewise.ops.tree import carry, tree_leaves, tree_map
from statewise.tasks.base import step_generator
from statewise.tasks.config import build_task
from statewise.tasks.tokenizer import install_run_tokenizer
from statewise.train import checkpoint, distributed
from statewise.train.config import RunConfig, TrainConfig
from statewise.train.lock import writer_lock
from statewise.train.objectives import Objective, objective_for
from statewise.train.optim import (
    NTASGD,
    check_finite_step,
    clip_gradients,
    diverged_forward,
    make_optimizer,
    set_lr,
)
from statewise.train.progress import make_progress
from statewise.train.rows import cat_rows, row_slices, take_rows
from statewise.train.tensorboard import check_available, open_event_log

RESET_SEED_OFFSET = 15_485_863  # train.state_reset draws: a stream of their own
NOISE_SEED_OFFSET = 32_452_843  # train.state_noise draws: another


def check_out_dir(out: Path, resume: bool) -> checkpoint.Checkpoint | None:
    """The checkpoint in ``out`` that training continues from (None: a new run); refuses to
    overwrite anything. Called by the writer, holding the lock of ``out``: it removes what
    a killed save of its own left, and sets aside checkpoints newer than the one it
    continues from that cannot be read (kept as ``unreadable-step-N``)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another --out")
    checkpoint.clean_leftovers(out)
    try:
        saved = checkpoint.read(out)
    except CheckpointError as err:
        saved, problem = None, err
    if saved is not None:
        if not resume:
            raise FileExistsError(
                f"{out} already holds a checkpoint; continue it with --resume auto "
                "or choose another --out"
            )
        checkpoint.set_aside_unreadable(out, saved.path)
        return saved
    if any((out / checkpoint.CHECKPOINTS).glob("step-*")):
        raise FileExistsError(f"{out} holds checkpoints that cannot be read ({problem})")
    others = checkpoint.holds_other_files(out)
    if others:
        raise FileExistsError(
            f"{out} exists and is not a statewise run directory (it holds {others[0]!r}); "
            "choose another --out"
        )
    return None


def train(
    config: RunConfig, out: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the model of ``config`` and write its checkpoints to ``out``; returns the last
    metrics record. With ``resume``, continue the newest checkpoint already in ``out``.
    ``out`` is locked for the run (a second writer is refused); a non-finite loss,
    gradient norm, weight or activation raises TrainingDiverged before that step is taken,
    and the checkpoints stay as they were."""
    out = Path(out)
    world = distributed.join()  # one rank of torchrun's processes, or a world of one
    try:
        if not world.is_writer:
            return _train(config, out, resume, False, world)
        with writer_lock(out, f"statewise train --out {out}"):
            return _train(config, out, resume, progress, world)
    finally:
        distributed.leave(world)


def _train(
    config: RunConfig, out: Path, resume: bool, progress: bool, world: distributed.World
) -> dict[str, Any]:
    # the writer (rank 0) checks the run directory; the others read what it chose
    continuing = check_out_dir(out, resume) if world.is_writer else None
    chosen = distributed.from_writer(continuing.path if continuing else None, world)
    if not world.is_writer and chosen is not None:
        continuing = checkpoint.read(chosen, quiet=True)
    check_available(config.log)
    tc = config.train
    task = build_task(config.data, tc.seed)
    objective = objective_for(config.model, task)
    lm_only = {
        "state_passing": tc.state_passing,
        "state_noise": tc.state_noise > 0,
        "label_smoothing": tc.label_smoothing > 0,
    }
    if not objective.language_model and any(lm_only.values()):
        used = ", ".join(f"train.{name}" for name, on in lm_only.items() if on)
        raise ConfigError(
            f"{used}: options of language models (model.head 'lm'), not of model.head "
            f"{config.model.head!r}"
        )
    if getattr(task, "tokenizer", None) is not None and world.is_writer:
        install_run_tokenizer(task.tokenizer, out)  # text: the run keeps its tokenizer
    mine = distributed.my_rows(world, tc.batch_size)  # this rank's rows of every batch
    if tc.grad_accum > mine.stop - mine.start:
        raise ConfigError(
            f"train.grad_accum {tc.grad_accum} is more than the {mine.stop - mine.start} "
            f"rows each of the {world.size} processes trains on"
        )
    # state passing reads consecutive windows of each row's own stream (truncated BPTT)
    streams = tc.state_passing and hasattr(task, "stream_batch")
    next_batch = task.stream_batch if streams else task.train_batch
    torch.manual_seed(tc.seed)
    model = build_model(config.model)
    if world.rank > 0:  # the same weights, but dropout masks of a rank's own
        torch.manual_seed(tc.seed + world.rank)
    if tc.state_passing or tc.state_noise > 0:
        check_fixed_size_state(model)
    optimizer = make_optimizer(model, tc)
    averager = NTASGD(model, tc.nonmono) if tc.optimizer == "nt_asgd" else None
    start, tokens, metrics, carried, seconds_before = 0, 0, [], None, 0.0
    if continuing is not None:
        stored = continuing.config()
        if (stored.model, stored.data) != (config.model, config.data):
            raise ConfigError(
                f"{out} holds a run with another [model] or [data] config; "
                "resume it with the same config, or choose another --out"
            )
        continuing.load_weights(model)
        state = continuing.train_state()
        try:
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state.get("rng_ranks", [state["rng"]])[world.rank])
            start, tokens = state["step"], int(state["tokens"])
            if averager is not None:
                averager.load_state_dict(state["nt_asgd"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{continuing.path}: train_state.pt cannot resume this run ({type(err).__name__}: "
                f"{err}); it holds no usable optimizer or RNG state"
            ) from None
        carried = take_rows(state.get("carried"), mine)
        seconds_before = float(state.get("seconds", 0.0))
        metrics = continuing.metrics()

    def seconds() -> float:
        """Training time so far, summed over resumes (what train.budget_s limits)."""
        return seconds_before + time.perf_counter() - t0

    def save(done: int) -> None:
        # every rank's rows of the carried state and its RNG, gathered to the writer
        carried_by_rank = distributed.gather_to_writer(carried, world)
        rng_by_rank = distributed.gather_to_writer(torch.get_rng_state(), world)
        if not world.is_writer:
            return
        train_state = {
            "step": done,
            "tokens": tokens,
            "seconds": seconds(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_by_rank[0],
            # state passing: resuming stays exact
            "carried": None if carried is None else cat_rows(carried_by_rank),
        }
        if world.active:
            train_state["rng_ranks"] = rng_by_rank
        if averager is None:
            checkpoint.save(out, config, model, train_state, metrics, keep=tc.keep_checkpoints)
            return
        train_state["nt_asgd"] = averager.state_dict()  # the raw weights, before the swap
        with averager.averaged():  # the checkpoint's weights are the averaged ones
            checkpoint.save(out, config, model, train_state, metrics, keep=tc.keep_checkpoints)

    model.train()
    # DDP under torchrun: gradients averaged over ranks
    net = distributed.wrap(objective.wrap(model), world)
    bar = make_progress(  # under torchrun only rank 0 shows progress and messages
        tc.steps,
        start,
        f"{config.model.layer} {config.data.task}",
        enabled=progress,
        messages=world.is_writer,
    )
    events = open_event_log(out, config.log, start, enabled=world.is_writer)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.dtype == "bfloat16")
    done, t0, tokens_at_t0 = start, time.perf_counter(), tokens
    spent = over_budget(seconds_before, tc)
    if spent:
        bar.write(f"{out} has used its train.budget_s = {tc.budget_s:g} s; nothing to do")
    end = start if spent else tc.steps
    try:
        for step in range(start, end):
            lr = set_lr(optimizer, step, tc)
            full = next_batch(step, tc.batch_size)
            batch = take_rows(tuple(full), mine)
            rows_here = batch[0].shape[0]
            if tc.state_passing and carried is not None and tc.state_reset > 0:
                carried = reset_rows(model, carried, tc, step)
            start_state = carried
            if tc.state_noise > 0:
                start_state = noisy_state(model, rows_here, tc, step)
            # train.grad_accum micro-batches of rows, each loss summed over its units (target
            # tokens, lines, ...) and divided by the units of the whole batch (over every
            # rank, times the ranks DDP averages over): the summed gradient is the batch's
            optimizer.zero_grad(set_to_none=True)
            local = torch.tensor(float(objective.units(batch)))
            counted = max(float(distributed.sum_over_ranks(local, world)), 1.0) / world.size
            loss, finals = torch.zeros(()), []
            micro = row_slices(rows_here, tc.grad_accum)
            for i, rows in enumerate(micro):
                # DDP all-reduces the gradients once, after the last micro-batch
                sync = i == len(micro) - 1 or not world.active
                with contextlib.nullcontext() if sync else net.no_sync():
                    try:
                        with autocast:
                            part, final = objective.loss_sum(
                                net,
                                take_rows(batch, rows),
                                take_rows(start_state, rows),
                                tc.state_passing,
                                tc.label_smoothing,
                            )
                    except NonFiniteError as err:
                        raise diverged_forward(step + 1, model) from err
                    part = part.float() / counted
                    part.backward()
                loss, finals = loss + part.detach(), [*finals, final]
            if tc.state_passing:
                carried = tree_map(torch.Tensor.detach, cat_rows(finals))
            loss = distributed.sum_over_ranks(loss, world) / world.size  # the batch's mean
            check_finite_step(step + 1, loss, clip_gradients(model, tc.grad_clip))
            optimizer.step()
            if averager is not None:
                averager.after_step()
            done, tokens = step + 1, tokens + full[0].shape[:2].numel()
            speed = (tokens - tokens_at_t0) / max(time.perf_counter() - t0, 1e-9)
            elapsed = seconds()  # "seconds" in metrics.jsonl: curves against time
            stopped = tc.budget_s > 0 and done < tc.steps  # every rank stops at one step
            stopped = stopped and distributed.any_rank(over_budget(elapsed, tc), world)
            last = done == tc.steps or stopped
            logged = done % tc.log_every == 0 or last
            bar.update(done, loss.item(), lr, speed, elapsed, logged)
            record: dict[str, Any] = {}
            if logged:
                record = {
                    "step": done,
                    "loss": loss.item(),
                    "lr": lr,
                    "tokens": tokens,
                    "tokens_per_s": round(speed, 1),
                    "seconds": round(elapsed, 3),
                }
            if done % tc.eval_every == 0 or last:
                record = {
                    "step": done,
                    "loss": loss.item(),
                    "seconds": round(elapsed, 3),
                    **record,
                    **_evaluate(model, task, objective, tc, averager, done),
                }
                bar.write(_describe(record, objective.metric))
            if record:
                metrics.append(record)
                events.record(record)
            if done % tc.checkpoint_every == 0 or last:
                save(done)
            if stopped:
                bar.write(
                    f"stopped at step {done} of {tc.steps}: train.budget_s = {tc.budget_s:g} s "
                    "used (the learning-rate schedule is cut where it stands)"
                )
                break
    except KeyboardInterrupt:
        # under torchrun every rank is stopped at its own point, so nothing is gathered:
        # the run resumes from its last checkpoint
        if done > start and not world.active:
            save(done)
        raise
    finally:
        bar.close()
        events.close()
    return metrics[-1] if metrics else {"step": done}


def _evaluate(
    model: torch.nn.Module,
    task: Any,
    objective: Objective,
    tc: TrainConfig,
    averager: NTASGD | None,
    step: int,
) -> dict[str, Any]:
    """The validation record at ``step``; with NT-ASGD, of the averaged weights once
    averaging has started, and the loss goes to its trigger (``nt_asgd_averaging``: whether
    the weights evaluated and saved from here on are averaged)."""
    if averager is None:
        return objective.evaluate(model, task, tc.batch_size, tc.eval_batches)
    with averager.averaged():
        result = objective.evaluate(model, task, tc.batch_size, tc.eval_batches)
    averager.observe(result["val_loss"], step)
    return {**result, "nt_asgd_averaging": averager.triggered}


def over_budget(seconds: float, tc: TrainConfig) -> bool:
    """Whether ``seconds`` of training have used up train.budget_s (0: no budget)."""
    return tc.budget_s > 0 and seconds >= tc.budget_s


def reset_rows(model: torch.nn.Module, carried: Any, tc: TrainConfig, step: int) -> Any:
    """``carried`` with each row replaced by the initial state with chance tc.state_reset;
    the draw depends only on (seed, step), so a resumed run draws the same rows."""
    rows = tree_leaves(carried)[0].shape[0]
    g = step_generator(tc.seed + RESET_SEED_OFFSET, step)
    keep = torch.rand(rows, generator=g) >= tc.state_reset
    return carry(keep, carried, model.init_state(rows))


def noisy_state(model: torch.nn.Module, rows: int, tc: TrainConfig, step: int) -> Any:
    """The initial state plus N(0, tc.state_noise^2) in every float tensor; the draw depends
    only on (seed, step), so a resumed run draws the same noise."""
    g = step_generator(tc.seed + NOISE_SEED_OFFSET, step)

    def add_noise(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        return t + tc.state_noise * torch.randn(t.shape, generator=g, dtype=t.dtype)

    return tree_map(add_noise, model.init_state(rows))


def check_fixed_size_state(model: torch.nn.Module) -> None:
    """ConfigError if ``model`` has global attention: its key-value cache holds every token
    of the stream up to max_len, which state passing would reach after a few steps (local
    attention, with a window, keeps a fixed-size cache and is fine)."""
    from statewise.layers.attention import Attention

    if any(isinstance(m, Attention) and not m.window for m in model.modules()):
        raise ConfigError(
            "train.state_passing and state_noise need states of a fixed size; global "
            "attention's key-value cache grows with every step (give attention a window, or "
            "leave them off)"
        )


def _describe(record: dict[str, Any], metric: str) -> str:
    text = f"step {record['step']}: loss {record['loss']:.4f}, val_loss {record['val_loss']:.4f}"
    if "val_bits_per_char" in record:
        text += f" ({record['val_bits_per_char']:.3f} bits/char)"
    if "val_bits_per_byte" in record:
        text += f" ({record['val_bits_per_byte']:.3f} bits/byte)"
    return text + f", val_{metric} {record['val_' + metric]:.3f}"
