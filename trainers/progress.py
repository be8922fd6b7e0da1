"""Training progress snapshots and the Trainer callback that hands them to a reporter."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainers.checkpoints import Checkpoint, CheckpointStore
from trainers.evaluation import EarlyStopping, perplexity

logger = logging.getLogger(__name__)

# Written into each checkpoint while early stopping is on, so a resumed run keeps its best loss, patience count
# and best weights instead of starting over.
EARLY_STOPPING_FILE = "clara_early_stopping.json"
BEST_WEIGHTS_FILE = "clara_best_weights.safetensors"


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


class ProgressReporter:
    """Receives progress, evaluations and checkpoints during training; says when to stop.

    The defaults do nothing and never stop, so a caller overrides only what it needs.
    """

    def report(self, progress: TrainingProgress) -> None:
        """Take note of progress after a step."""

    def should_stop(self) -> bool:
        """Return True when the user cancelled the run."""
        return False

    def out_of_time(self) -> bool:
        """Return True when the run must checkpoint and stop because its time is up."""
        return False

    def handing_back(self) -> bool:
        """Return True when the run must checkpoint and stop because its worker is shutting down."""
        return False

    def evaluated(self, step: int, metrics: dict[str, float | None]) -> None:
        """Take note of an evaluation's eval_loss and perplexity."""

    def checkpoint_saved(self, checkpoint: Checkpoint, pruned_steps: list[int]) -> None:
        """Take note of a complete checkpoint and of the older ones deleted for it."""


class ReporterCallback(TrainerCallback):
    """Reports steps and evaluations, publishes checkpoints, and stops training when asked to."""

    def __init__(self, reporter: ProgressReporter, store: CheckpointStore | None = None,
                 early_stopping_patience: int | None = None) -> None:
        self.reporter = reporter
        self.store = store
        self.cancelled = False
        self.timed_out = False
        self.handed_back = False
        self.stopped_early = False
        self.last_progress: TrainingProgress | None = None
        self.last_eval: dict[str, float | None] = {}
        self.early_stopping = EarlyStopping(early_stopping_patience)
        self.best_step: int | None = None
        self.best_eval: dict[str, float | None] = {}
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._started_at: float | None = None
        self._first_step = 0
        self.tokens_at_start = 0
        self.checkpoint_facts: dict[str, Any] = {}
        """Facts every checkpoint records besides its losses, such as the base model's revision."""

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Start the clock used for eta and throughput; a resumed run counts from where it resumed."""
        self._started_at = time.monotonic()
        self._first_step = state.global_step
        self.tokens_at_start = int(state.num_input_tokens_seen)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Stop after this step on a cancel; checkpoint first and then stop when time is up or on hand-back."""
        if not self.cancelled and self.reporter.should_stop():
            logger.info("Training was cancelled at step %s of %s.", state.global_step, state.max_steps)
            self.cancelled = True
        if self.cancelled:
            control.should_training_stop = True
            control.should_save = False
            return
        if self.timed_out or self.handed_back or state.global_step >= state.max_steps:
            # The last step ends the run anyway, and its adapter is worth more than a checkpoint.
            return
        if self.reporter.out_of_time():
            logger.info("Time is up at step %s of %s, so training saves a checkpoint and stops.",
                        state.global_step, state.max_steps)
            self.timed_out = True
        elif self.reporter.handing_back():
            logger.info("The worker is shutting down at step %s of %s, so training saves a checkpoint and stops.",
                        state.global_step, state.max_steps)
            self.handed_back = True
        else:
            return
        control.should_training_stop = True
        control.should_save = self.store is not None

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        metrics: dict[str, float] | None = None, **kwargs: Any,
    ) -> None:
        """Report the eval loss and perplexity, and stop once patience runs out."""
        if not metrics or "eval_loss" not in metrics:
            return
        loss = float(metrics["eval_loss"])
        self.last_eval = {"eval_loss": loss, "perplexity": perplexity(loss)}
        logger.info("Evaluation at step %s: eval loss %.4f.", state.global_step, loss)
        self.reporter.evaluated(state.global_step, dict(self.last_eval))
        stop = self.early_stopping.update(loss)
        if self.early_stopping.patience is not None and self.early_stopping.bad_evaluations == 0:
            self._remember_best(state.global_step, kwargs.get("model"))
        if stop and not self.stopped_early:
            logger.info("Eval loss has not improved for %s evaluations, so training stops early at step %s.",
                        self.early_stopping.patience, state.global_step)
            self.stopped_early = True
            control.should_training_stop = True

    def _remember_best(self, step: int, model: torch.nn.Module | None) -> None:
        """Copy the trainable weights of the best evaluation so far, for restoring after an early stop."""
        self.best_step = step
        self.best_eval = dict(self.last_eval)
        if model is None:
            return
        # Only the adapter trains, so the copy is megabytes even for a large base model.
        with torch.no_grad():
            self._best_weights = {name: parameter.detach().clone() for name, parameter in model.named_parameters()
                                  if parameter.requires_grad}

    def restore_best(self, model: torch.nn.Module) -> bool:
        """Put back the weights of the best evaluation after an early stop; False when there is nothing to restore."""
        if not self.stopped_early or self._best_weights is None:
            return False
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, weights in self._best_weights.items():
                parameters[name].copy_(weights)
        logger.info("Training stopped early, so the adapter gets the weights of step %s, whose eval loss %.4f was "
                    "the lowest.", self.best_step, self.best_eval["eval_loss"])
        return True

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Move the checkpoint the Trainer just wrote out of staging, making it count."""
        if self.store is None:
            return
        metrics = {"train_loss": self.last_progress.loss if self.last_progress else None,
                   "eval_loss": self.last_eval.get("eval_loss"), **self.checkpoint_facts}
        created_at = datetime.now(UTC).isoformat()
        keep = None
        if self.early_stopping.patience is not None:
            self.save_early_stopping(self.store.staging / f"checkpoint-{state.global_step}")
            keep = self.best_step
        checkpoint = self.store.publish(state.global_step, created_at, metrics, keep=keep)
        self.reporter.checkpoint_saved(checkpoint, list(self.store.last_pruned))

    def save_early_stopping(self, directory: Path) -> None:
        """Write the early stopping count and the best weights into a checkpoint directory."""
        state = {**self.early_stopping.state(), "best_step": self.best_step, "best_eval": self.best_eval}
        (directory / EARLY_STOPPING_FILE).write_text(json.dumps(state, sort_keys=True), encoding="utf-8")
        if self._best_weights is not None:
            save_file({name: weights.detach().contiguous().cpu() for name, weights in self._best_weights.items()},
                      str(directory / BEST_WEIGHTS_FILE))

    def restore_early_stopping(self, directory: Path) -> None:
        """Take up the early stopping count and best weights a checkpoint kept; nothing when it kept none."""
        if self.early_stopping.patience is None:
            return
        try:
            state = json.loads((directory / EARLY_STOPPING_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            logger.warning("Early stopping starts over: the state in %s cannot be read (%s).", directory, error)
            return
        self.early_stopping.restore(state)
        self.best_step = state.get("best_step")
        self.best_eval = dict(state.get("best_eval") or {})
        weights = directory / BEST_WEIGHTS_FILE
        if weights.is_file():
            self._best_weights = load_file(str(weights))
        logger.info("Resumed early stopping: best eval loss %s at step %s, %s evaluations without improvement.",
                    self.early_stopping.best, self.best_step, self.early_stopping.bad_evaluations)

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
        tokens_this_run = tokens - self.tokens_at_start
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
            tokens_per_second=tokens_this_run / elapsed if elapsed else None,
        )
