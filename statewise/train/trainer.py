"""The training loop: AdamW, warm-up + cosine, gradient clipping, checkpoints, exact resume.

Resuming is exact: the batch of step s depends only on (seed, s) (see tasks.base), and the
checkpoint carries the weights, the optimizer moments and the RNG state, so a run stopped
at any point and resumed with ``resume=True`` ends with the same weights and losses as a
run that was never stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from statewise.errors import CheckpointError, ConfigError, NonFiniteError
from statewise.models import build_model
from statewise.ops.tree import carry, tree_leaves, tree_map
from statewise.tasks.base import step_generator, unpack_batch
from statewise.tasks.config import build_task
from statewise.train import checkpoint
from statewise.train.config import RunConfig, TrainConfig
from statewise.train.evaluate import evaluate, token_loss
from statewise.train.lock import writer_lock
from statewise.train.optim import (
    check_finite_step,
    clip_gradients,
    diverged_forward,
    lr_at,
    make_optimizer,
)

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
    with writer_lock(out, f"statewise train --out {out}"):
        return _train(config, out, resume, progress)


def _train(config: RunConfig, out: Path, resume: bool, progress: bool) -> dict[str, Any]:
    continuing = check_out_dir(out, resume)
    if config.model.head != "lm":
        raise ConfigError('statewise train fits language models (model.head = "lm")')
    tc = config.train
    task = build_task(config.data, tc.seed)
    if config.model.vocab_size < task.vocab_size:
        raise ConfigError(
            f"model.vocab_size {config.model.vocab_size} is smaller than the "
            f"task's vocabulary {task.vocab_size}"
        )
    torch.manual_seed(tc.seed)
    model = build_model(config.model)
    if tc.state_passing or tc.state_noise > 0:
        check_fixed_size_state(model)
    optimizer = make_optimizer(model, tc)
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
            torch.set_rng_state(state["rng"])
            start, tokens = state["step"], int(state["tokens"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{continuing.path}: train_state.pt cannot resume this run ({type(err).__name__}: "
                f"{err}); it holds no usable optimizer or RNG state"
            ) from None
        carried = state.get("carried")
        seconds_before = float(state.get("seconds", 0.0))
        metrics = continuing.metrics()

    def seconds() -> float:
        """Training time so far, summed over resumes (what train.budget_s limits)."""
        return seconds_before + time.perf_counter() - t0

    def save(done: int) -> None:
        train_state = {
            "step": done,
            "tokens": tokens,
            "seconds": seconds(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "carried": carried,  # state passing: resuming stays exact
        }
        checkpoint.save(out, config, model, train_state, metrics, keep=tc.keep_checkpoints)

    model.train()
    bar = tqdm(
        total=tc.steps,
        initial=start,
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
        desc=f"{config.model.layer} {config.data.task}",
    )
    done, t0, tokens_at_t0 = start, time.perf_counter(), tokens
    spent = over_budget(seconds_before, tc)
    if spent:
        bar.write(f"{out} has used its train.budget_s = {tc.budget_s:g} s; nothing to do")
    end = start if spent else tc.steps
    try:
        for step in range(start, end):
            lr = lr_at(step, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, targets, resets = unpack_batch(task.train_batch(step, tc.batch_size))
            try:
                if tc.state_passing:
                    if carried is not None and tc.state_reset > 0:
                        carried = reset_rows(model, carried, tc, step)
                    logits, final = model(
                        inputs, state=carried, return_state=True, resets=resets
                    )
                    carried = tree_map(torch.Tensor.detach, final)
                elif tc.state_noise > 0:
                    state = noisy_state(model, inputs.shape[0], tc, step)
                    logits = model(inputs, state=state, resets=resets)
                else:
                    logits = model(inputs, resets=resets)
            except NonFiniteError as err:
                raise diverged_forward(step + 1, model) from err
            loss = token_loss(logits, targets, tc.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            check_finite_step(step + 1, loss, clip_gradients(model, tc.grad_clip))
            optimizer.step()
            done, tokens = step + 1, tokens + inputs.numel()
            speed = (tokens - tokens_at_t0) / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", tok_s=f"{speed:,.0f}", refresh=False)
            stopped = over_budget(seconds(), tc) and done < tc.steps
            last = done == tc.steps or stopped
            record: dict[str, Any] = {}
            if done % tc.log_every == 0 or last:
                record = {
                    "step": done,
                    "loss": loss.item(),
                    "lr": lr,
                    "tokens": tokens,
                    "tokens_per_s": round(speed, 1),
                }
            if done % tc.eval_every == 0 or last:
                record = {
                    "step": done,
                    "loss": loss.item(),
                    **record,
                    **evaluate(model, task, tc.batch_size, tc.eval_batches),
                }
                bar.write(_describe(record))
            if record:
                metrics.append(record)
            if done % tc.checkpoint_every == 0 or last:
                save(done)
            if stopped:
                bar.write(
                    f"stopped at step {done} of {tc.steps}: train.budget_s = {tc.budget_s:g} s "
                    "used (the learning-rate schedule is cut where it stands)"
                )
                break
    except KeyboardInterrupt:
        if done > start:
            save(done)
        raise
    finally:
        bar.close()
    return metrics[-1] if metrics else {"step": done}


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


def _describe(record: dict[str, Any]) -> str:
    text = f"step {record['step']}: loss {record['loss']:.4f}, val_loss {record['val_loss']:.4f}"
    if "val_bits_per_char" in record:
        text += f" ({record['val_bits_per_char']:.3f} bits/char)"
    return text + f", val_accuracy {record['val_accuracy']:.3f}"
