"""Tests for the Trainer callback that reports progress and handles cancellation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from trainers.progress import ReporterCallback


@pytest.fixture
def args(tmp_path: Path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")


def step(callback: ReporterCallback, args: TrainingArguments, state: TrainerState, control: TrainerControl,
         logs: dict[str, float]) -> None:
    """Advance the state by one step and fire the events the Trainer fires for it, in its order."""
    state.global_step += 1
    state.epoch = state.global_step / 5
    state.num_input_tokens_seen += 40
    callback.on_step_end(args, state, control)
    callback.on_log(args, state, control, logs=logs)


def test_reports_each_logged_step(args: TrainingArguments, reporter_factory: Callable[..., Any]) -> None:
    reporter = reporter_factory()
    callback = ReporterCallback(reporter)
    state, control = TrainerState(max_steps=10), TrainerControl()
    callback.on_train_begin(args, state, control)
    step(callback, args, state, control, {"loss": 2.5, "learning_rate": 1e-3})
    step(callback, args, state, control, {"loss": 2.0, "learning_rate": 5e-4})
    summary = [(p.step, p.total_steps, p.percent, p.loss, p.learning_rate, p.trained_tokens) for p in reporter.reports]
    assert summary == [
        (1, 10, 10.0, 2.5, 1e-3, 40),
        (2, 10, 20.0, 2.0, 5e-4, 80),
    ]
    last = reporter.reports[-1]
    assert last.epoch == pytest.approx(0.4)
    assert last.eta_seconds is not None and last.eta_seconds >= 0
    assert last.tokens_per_second is not None and last.tokens_per_second > 0
    assert callback.last_progress is last
    assert not control.should_training_stop and not callback.cancelled


def test_final_metrics_log_is_not_a_step_report(args: TrainingArguments, reporter_factory: Callable[..., Any]) -> None:
    reporter = reporter_factory()
    callback = ReporterCallback(reporter)
    state = TrainerState(max_steps=3, global_step=3)
    callback.on_log(args, state, TrainerControl(), logs={"train_loss": 1.0, "train_runtime": 2.0})
    assert reporter.reports == []


def test_stops_training_when_the_reporter_asks(args: TrainingArguments, reporter_factory: Callable[..., Any]) -> None:
    reporter = reporter_factory(stop_after=2)
    callback = ReporterCallback(reporter)
    state, control = TrainerState(max_steps=10), TrainerControl()
    callback.on_train_begin(args, state, control)
    step(callback, args, state, control, {"loss": 1.0, "learning_rate": 1e-3})
    step(callback, args, state, control, {"loss": 1.0, "learning_rate": 1e-3})
    assert not control.should_training_stop
    step(callback, args, state, control, {"loss": 1.0, "learning_rate": 1e-3})
    assert control.should_training_stop and callback.cancelled
    assert [p.step for p in reporter.reports] == [1, 2, 3]
