"""The training loop: the transformers Trainer with Clara's token count, checkpoints and evaluation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments
from transformers.trainer_utils import EvalLoopOutput

from trainers.checkpoints import CheckpointStore
from trainers.config import LoraHyperparameters
from trainers.data import IGNORE_INDEX
from trainers.evaluation import perplexity
from trainers.progress import ReporterCallback

logger = logging.getLogger(__name__)

REAL_TOKENS_KEY = "num_real_tokens"


class ClaraTrainer(Trainer):
    """A Trainer that counts the real tokens its collators report, pads eval batches and averages eval loss by token."""

    def __init__(self, *args: Any, eval_data_collator: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """Take the collator's token count out of the inputs before the model sees them."""
        real_tokens = inputs.pop(REAL_TOKENS_KEY, None)
        if real_tokens is not None and model.training:
            # The Trainer's own count needs an attention mask, which packed batches must not carry.
            self.state.num_input_tokens_seen += int(real_tokens)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> torch.utils.data.DataLoader:
        """Batch evaluation data with the padding collator, so eval losses compare across packed and padded runs."""
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator = self.data_collator
        self.data_collator = self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def evaluation_loop(self, dataloader: torch.utils.data.DataLoader, description: str,
                        prediction_loss_only: bool | None = None, ignore_keys: list[str] | None = None,
                        metric_key_prefix: str = "eval") -> EvalLoopOutput:
        """The loss summed over every trained token of the dataset, divided by their count.

        The Trainer's own loop averages the means of its batches, so the figure would change with the batch size
        and weigh a token of a short record more than one of a long record.
        """
        model = self.model
        model.eval()
        self.callback_handler.eval_dataloader = dataloader
        loss_sum = 0.0
        tokens = samples = 0
        for batch in dataloader:
            inputs = self._prepare_inputs(batch)
            inputs.pop(REAL_TOKENS_KEY, None)
            labels = inputs.pop("labels")
            with torch.no_grad(), self.compute_loss_context_manager():
                logits = model(**inputs).logits
            # Position i predicts label i + 1, as in the model's own loss.
            targets = labels[:, 1:].to(logits.device)
            loss_sum += float(torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"))
            tokens += int((targets != IGNORE_INDEX).sum())
            samples += labels.shape[0]
        metrics = {f"{metric_key_prefix}_loss": loss_sum / tokens} if tokens else {}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=samples)


@dataclass
class LoopPlan:
    """What one run of the loop does besides training: where it checkpoints, when it evaluates."""

    total_steps: int
    store: CheckpointStore | None
    resume_from: Path | None
    has_validation: bool
    gradient_checkpointing: bool
    device: str
    bf16: bool
    eval_interval: int
    """Optimizer steps between evaluations, after the floor that bounds evaluations per run."""
    save_interval: int
    """Optimizer steps between checkpoints, after the floor that bounds checkpoints per run."""


def training_arguments(hyperparameters: LoraHyperparameters, plan: LoopPlan, scratch_dir: Path) -> TrainingArguments:
    """Translate hyperparameters and the plan into Trainer arguments; checkpoints go to staging first."""
    max_steps = hyperparameters.max_steps
    evaluate = plan.has_validation
    return TrainingArguments(
        output_dir=str(plan.store.staging if plan.store else scratch_dir),
        num_train_epochs=hyperparameters.num_epochs,
        max_steps=max_steps if max_steps is not None else -1,
        learning_rate=hyperparameters.learning_rate,
        per_device_train_batch_size=hyperparameters.batch_size,
        per_device_eval_batch_size=hyperparameters.batch_size,
        gradient_accumulation_steps=hyperparameters.gradient_accumulation_steps,
        # Values below 1 are a share of the total steps.
        warmup_steps=hyperparameters.warmup_ratio,
        lr_scheduler_type="linear",
        seed=hyperparameters.seed,
        data_seed=hyperparameters.seed,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps" if plan.store else "no",
        save_steps=plan.save_interval,
        # CheckpointStore keeps the count: the Trainer's rotation would delete inside staging only.
        save_total_limit=None,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=plan.eval_interval if evaluate else None,
        prediction_loss_only=True,
        report_to="none",
        disable_tqdm=True,
        use_cpu=plan.device == "cpu",
        bf16=plan.bf16,
        activation_checkpointing=plan.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if plan.gradient_checkpointing else None,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=plan.device == "cuda",
        include_num_input_tokens_seen="no",
    )


def make_trainer(model: torch.nn.Module, hyperparameters: LoraHyperparameters, plan: LoopPlan, scratch_dir: Path,
                 train_dataset: torch.utils.data.Dataset, eval_dataset: torch.utils.data.Dataset | None,
                 train_collator: Any, eval_collator: Any, callback: ReporterCallback) -> ClaraTrainer:
    """Build the Trainer for one run; its printer is removed because progress goes through the callback."""
    trainer = ClaraTrainer(
        model=model,
        args=training_arguments(hyperparameters, plan, scratch_dir),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def evaluate(trainer: ClaraTrainer, dataset: torch.utils.data.Dataset, prefix: str) -> dict[str, float | None]:
    """Evaluate on a dataset outside the schedule and return its loss and perplexity."""
    metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
    loss = metrics.get(f"{prefix}_loss")
    return {"loss": float(loss) if loss is not None else None, "perplexity": perplexity(loss)}


def run(trainer: ClaraTrainer, plan: LoopPlan) -> Any:
    """Train from scratch or from the plan's checkpoint and return the Trainer's output."""
    if plan.resume_from is not None:
        logger.info("Resuming training from %s.", plan.resume_from)
    return trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
