"""Training progress snapshots and the Trainer callback that hands them to a reporter."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class TrainingProgress:
    """Where a training run stands after an optimizer step."""

    step: int
    """Optimizer steps done."""
    total_steps: int
    """Optimizer steps the run will do unless cancelled."""
    epoch: float
    """Passes over the dataset done, fractional."""
    percent: float
    """step / total_steps as a percentage from 0 to 100."""
    eta_seconds: float | None
    """Estimated seconds until the last step, from the mean wall time per step so far."""
    loss: float | None
    """Latest logged training loss."""
    learning_rate: float | None
    """Learning rate used for the latest step."""
    trained_tokens: int
    """Non-padding input tokens seen so far."""
    tokens_per_second: float | None
    """trained_tokens divided by the wall time since training began."""


class ProgressReporter(Protocol):
    """Receives progress during training and says whether the user cancelled."""

    def report(self, progress: TrainingProgress) -> None:
        """Take note of progress after a step."""

    def should_stop(self) -> bool:
        """Return True when the user cancelled the run."""


class ReporterCallback(TrainerCallback):
    """Reports every logged step to a ProgressReporter and stops training when it asks to."""

    def __init__(self, reporter: ProgressReporter) -> None:
        self.reporter = reporter
        self.cancelled = False
        self.last_progress: TrainingProgress | None = None
        self._started_at: float | None = None
        self._first_step = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Start the clock used for eta and throughput."""
        self._started_at = time.monotonic()
        self._first_step = state.global_step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Ask the reporter whether to stop, and stop after this step when it says so."""
        if not self.cancelled and self.reporter.should_stop():
            logger.info("Training was cancelled at step %s of %s.", state.global_step, state.max_steps)
            self.cancelled = True
        if self.cancelled:
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Report a step's loss; the Trainer logs after on_step_end, so this is where the loss is known."""
        if not logs or "loss" not in logs:
            return
        progress = self._progress(state, logs)
        self.last_progress = progress
        logger.info(
            "Step %s of %s: loss %.4f, learning rate %.3g, %s tokens, about %s seconds left.",
            progress.step,
            progress.total_steps,
            progress.loss,
            progress.learning_rate or 0.0,
            progress.trained_tokens,
            "an unknown number of" if progress.eta_seconds is None else round(progress.eta_seconds),
        )
        self.reporter.report(progress)

    def _progress(self, state: TrainerState, logs: dict[str, float]) -> TrainingProgress:
        """Build a progress snapshot from the trainer state and the latest logs."""
        elapsed = time.monotonic() - self._started_at if self._started_at is not None else None
        steps_done = state.global_step - self._first_step
        total = max(state.max_steps, state.global_step)
        eta = None
        if elapsed is not None and steps_done > 0:
            eta = elapsed / steps_done * (total - state.global_step)
        tokens = int(state.num_input_tokens_seen)
        learning_rate = logs.get("learning_rate")
        return TrainingProgress(
            step=state.global_step,
            total_steps=total,
            epoch=float(state.epoch or 0.0),
            percent=100.0 * state.global_step / total if total else 0.0,
            eta_seconds=eta,
            loss=float(logs["loss"]),
            learning_rate=float(learning_rate) if learning_rate is not None else None,
            trained_tokens=tokens,
            tokens_per_second=tokens / elapsed if elapsed else None,
        )
