"""Held-out data for evaluation, perplexity, and early stopping on the eval loss."""

from __future__ import annotations

import hashlib
import logging
import math
from array import array
from collections.abc import Sequence

logger = logging.getLogger(__name__)

# exp() of a loss above this overflows a float; such a model is untrained noise anyway.
MAX_LOSS_FOR_PERPLEXITY = 700.0
EVALUATIONS_PER_RUN = 10


def split_examples(examples: Sequence[dict[str, list[int]]], fraction: float,
                   seed: int) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]]]:
    """Split encoded examples into (train, validation) by a seeded hash of their tokens.

    The hash, not the position, decides, so the split survives reordering and resumed attempts,
    and identical records always land on the same side.
    """
    if fraction <= 0:
        return list(examples), []
    threshold = int(fraction * 2**64)
    train, validation = [], []
    key = seed.to_bytes(8, "little", signed=False)
    for example in examples:
        digest = hashlib.blake2b(array("q", example["input_ids"]).tobytes(), digest_size=8, key=key).digest()
        (validation if int.from_bytes(digest, "little") < threshold else train).append(example)
    if not validation and len(train) > 1:
        # A tiny file can hash entirely to one side; one held-out record still beats none.
        validation.append(train.pop())
    return train, validation


def perplexity(loss: float | None) -> float | None:
    """exp(loss), or None when there is no loss or it is too large to mean anything."""
    if loss is None or not math.isfinite(loss) or loss > MAX_LOSS_FOR_PERPLEXITY:
        return None
    return math.exp(loss)


def default_interval(total_steps: int) -> int:
    """Steps between evaluations or checkpoints when the user gave none: about a tenth of the run."""
    return max(1, math.ceil(total_steps / EVALUATIONS_PER_RUN))


def effective_interval(requested: int | None, total_steps: int, max_per_run: int) -> int:
    """Steps between evaluations or checkpoints: as requested, or a tenth of the run, yet at most max_per_run a run.

    Each evaluation and checkpoint writes an event (and a checkpoint writes files), so a tiny interval on a long
    run would write without bound.
    """
    return max(requested or default_interval(total_steps), math.ceil(total_steps / max_per_run), 1)


def planned_steps(num_examples: int, batch_size: int, gradient_accumulation_steps: int, num_epochs: float,
                  max_steps: int | None) -> int:
    """The optimizer steps a run will take, as the Trainer counts them."""
    if max_steps is not None:
        return max_steps
    batches = math.ceil(num_examples / batch_size)
    per_epoch = max(1, batches // gradient_accumulation_steps + int(batches % gradient_accumulation_steps > 0))
    return max(1, math.ceil(num_epochs * per_epoch))


class EarlyStopping:
    """Counts evaluations without a lower eval loss and says when patience has run out."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best: float | None = None
        self.bad_evaluations = 0

    def state(self) -> dict[str, float | int | None]:
        """What a checkpoint keeps so that a resumed run goes on counting."""
        return {"best": self.best, "bad_evaluations": self.bad_evaluations}

    def restore(self, state: dict[str, float | int | None]) -> None:
        """Take up the count a checkpoint kept."""
        best = state.get("best")
        self.best = float(best) if best is not None else None
        self.bad_evaluations = int(state.get("bad_evaluations") or 0)

    def update(self, eval_loss: float) -> bool:
        """Record an evaluation; return True when training should stop."""
        if self.best is None or eval_loss < self.best:
            self.best = eval_loss
            self.bad_evaluations = 0
            return False
        self.bad_evaluations += 1
        return self.patience is not None and self.bad_evaluations >= self.patience
