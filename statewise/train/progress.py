"""Progress output of a training run: a bar on a terminal, plain lines in a log file or CI.

On a terminal, a tqdm bar redraws one line in place. Redrawn bars written to a file or a
CI log turn into hundreds of ``\\r``-separated copies, so there, one plain line is printed
per log interval (``train.log_every``) instead::

    step 200/1000  loss 1.2340  lr 2.90e-03  12,345 tok/s  0:01:23

The trainer talks to a ``Progress`` only; ``make_progress`` picks the kind. A process that
should print nothing (``--no-progress``, or a rank other than 0 under torchrun) gets a
``QuietProgress``, which still prints the trainer's messages (``write``) unless told not to.
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Protocol, TextIO

from tqdm import tqdm


class Progress(Protocol):
    """What the trainer calls: ``update`` after every optimizer step, ``write`` for a
    message (the evaluation results, a budget stop), ``close`` once at the end."""

    def update(
        self, step: int, loss: float, lr: float, tokens_per_s: float, seconds: float, log: bool
    ) -> None:
        """Step ``step`` (1-based, the steps done) is done; ``log``: it is a logged step."""

    def write(self, text: str) -> None:
        """Print one message line (stdout), without breaking a bar that is drawn."""

    def close(self) -> None:
        """The run ended (or stopped): finish the bar or the lines."""


def in_ci(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment says it is a CI job: ``CI`` set to anything but empty, 0,
    false or no (GitHub Actions, GitLab CI, Travis, CircleCI and Buildkite set CI=true)."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal that a bar can redraw in place."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def make_progress(
    total: int,
    initial: int = 0,
    desc: str = "",
    enabled: bool = True,
    messages: bool = True,
    stream: TextIO | None = None,
) -> Progress:
    """The progress output of a run of ``total`` steps that starts after step ``initial``.

    ``stream`` (default: sys.stderr, as looked up now) gets the bar or the lines; a bar when
    it is a terminal and not in CI (``in_ci``), plain lines otherwise. ``enabled=False``
    prints no progress at all, and ``messages=False`` not even the trainer's messages (for
    a process that is not the run's logger)."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return QuietProgress(messages)
    if is_terminal(stream) and not in_ci():
        return BarProgress(total, initial, desc, stream)
    return LineProgress(total, stream)


class BarProgress:
    """A tqdm bar redrawn in place, with the loss and tokens/s of the last step."""

    def __init__(self, total: int, initial: int, desc: str, stream: TextIO) -> None:
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            dynamic_ncols=True,
            desc=desc,
            file=stream,
        )

    def update(
        self, step: int, loss: float, lr: float, tokens_per_s: float, seconds: float, log: bool
    ) -> None:
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


class LineProgress:
    """One plain line per logged step, flushed at once, for files, pipes and CI logs."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream = total, stream

    def update(
        self, step: int, loss: float, lr: float, tokens_per_s: float, seconds: float, log: bool
    ) -> None:
        if log:
            print(
                progress_line(step, self.total, loss, lr, tokens_per_s, seconds), file=self.stream
            )
            self.stream.flush()

    def write(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def close(self) -> None:
        pass


class QuietProgress:
    """No progress output; the trainer's messages still go to stdout when ``messages``."""

    def __init__(self, messages: bool = True) -> None:
        self.messages = messages

    def update(
        self, step: int, loss: float, lr: float, tokens_per_s: float, seconds: float, log: bool
    ) -> None:
        pass

    def write(self, text: str) -> None:
        if self.messages:
            print(text, file=sys.stdout, flush=True)

    def close(self) -> None:
        pass


def progress_line(
    step: int, total: int, loss: float, lr: float, tokens_per_s: float, seconds: float
) -> str:
    """``step 200/1000  loss 1.2340  lr 2.90e-03  12,345 tok/s  0:01:23``: the loss with the
    4 decimals of the evaluation lines, the learning rate in 3 significant digits, the
    training time so far (summed over resumes) as h:mm:ss."""
    elapsed = datetime.timedelta(seconds=int(max(seconds, 0.0)))
    return (
        f"step {step}/{total}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  {elapsed}"
    )
