"""Train a LoRA adapter on a causal language model with peft and the transformers Trainer."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.pytorch_utils import Conv1D

from trainers.config import ALL_LINEAR, LoraHyperparameters, TrainingConfigError
from trainers.data import CausalLMCollator, EncodedDataset, load_dataset
from trainers.devices import supports_bf16, training_device
from trainers.progress import ProgressReporter, ReporterCallback
from trainers.record_format import dataset_problems

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
METRICS_FILE = "metrics.json"
# Module types peft's LoRA can wrap; targeting anything else makes get_peft_model fail.
LORA_MODULE_TYPES = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                     torch.nn.MultiheadAttention, Conv1D)
MAX_REASON_LENGTH = 300


class ModelLoadError(RuntimeError):
    """The base model or its tokenizer could not be loaded."""


@dataclass
class TrainingRequest:
    """Everything one LoRA training job needs."""

    base_model: str
    """Local model directory or hub id, loaded with from_pretrained."""
    dataset_path: Path
    """JSONL file of training records."""
    output_dir: Path
    """Directory the finished adapter is published to; must not exist yet or be empty."""
    hyperparameters: LoraHyperparameters = field(default_factory=LoraHyperparameters)
    """Training and LoRA settings."""


@dataclass
class TrainingResult:
    """Outcome of a training job."""

    status: Literal["completed", "cancelled"]
    """Whether the run finished or the reporter cancelled it."""
    adapter_dir: Path | None
    """Directory holding the adapter; None when cancelled."""
    metrics: dict[str, Any]
    """Loss, throughput and size figures of the run."""


def check_request(request: TrainingRequest) -> None:
    """Validate a request without loading weights; raise one TrainingConfigError listing every problem."""
    hyperparameters = request.hyperparameters
    problems = list(hyperparameters.problems())
    problems.extend(f"dataset: {problem}" for problem in dataset_problems(Path(request.dataset_path)))
    problems.extend(_output_dir_problems(Path(request.output_dir)))
    config, problem = _load_config(str(request.base_model))
    if problem:
        problems.append(problem)
    elif not any(p.startswith("target_modules:") for p in problems):
        problems.extend(_architecture_problems(config, hyperparameters.target_modules))
    if problems:
        raise TrainingConfigError(problems)


def _output_dir_problems(output_dir: Path) -> list[str]:
    """Refuse an output directory that already holds files, above all a finished adapter."""
    if (output_dir / ADAPTER_CONFIG).exists():
        return [f"output_dir: {output_dir} already holds an adapter"]
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        return [f"output_dir: {output_dir} already exists and is not an empty directory"]
    return []


def _load_config(base_model: str) -> tuple[PretrainedConfig | None, str | None]:
    """Load the base model's configuration, or return a problem saying why it cannot be loaded."""
    looks_local = Path(base_model).is_absolute() or base_model.startswith((".", "~"))
    if looks_local and not Path(base_model).expanduser().is_dir():
        return None, f"base_model: cannot load {base_model} (no such directory)"
    try:
        return AutoConfig.from_pretrained(base_model), None
    except (OSError, ValueError, KeyError) as error:
        return None, f"base_model: cannot load {base_model} ({_reason(error)})"


def _architecture_problems(config: PretrainedConfig, target_modules: list[str] | str | None) -> list[str]:
    """Build the model on the meta device and check it is a causal LM with the requested target modules."""
    try:
        # The meta device allocates no memory, so even very large architectures build instantly.
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, ImportError, TypeError) as error:
        return [f"base_model: {config.model_type} models cannot be trained as causal language models "
                f"({_reason(error)})"]
    targets = resolve_target_modules(target_modules, config.model_type)
    if targets == ALL_LINEAR:
        return []
    modules = dict(model.named_modules())
    adaptable = sorted({name.rsplit(".", 1)[-1] for name, module in modules.items()
                        if isinstance(module, LORA_MODULE_TYPES)})
    problems = []
    for target in targets:
        matches = [module for name, module in modules.items() if name == target or name.endswith(f".{target}")]
        if not matches:
            problems.append(f"target_modules: {config.model_type} models have no module named '{target}' "
                            f"(adaptable modules: {', '.join(adaptable)})")
        elif not all(isinstance(module, LORA_MODULE_TYPES) for module in matches):
            kinds = sorted({type(module).__name__ for module in matches if not isinstance(module, LORA_MODULE_TYPES)})
            problems.append(f"target_modules: '{target}' names {', '.join(kinds)} modules, which LoRA cannot adapt "
                            f"(adaptable modules: {', '.join(adaptable)})")
    return problems


def resolve_target_modules(target_modules: list[str] | str | None, model_type: str) -> list[str] | str:
    """Return the modules to adapt: the given ones, peft's default for the model type, or all linear layers."""
    if target_modules is not None:
        return target_modules
    default = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    return list(default) if default else ALL_LINEAR


def _reason(error: BaseException) -> str:
    """Shorten an exception message to its first line for a problem report."""
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    return reason if len(reason) <= MAX_REASON_LENGTH else reason[: MAX_REASON_LENGTH - 3] + "..."


def load_tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    """Load the base model's tokenizer and make sure it can pad."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"Cannot load the tokenizer of {base_model}: {_reason(error)}") from error
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelLoadError(f"The tokenizer of {base_model} has no pad, eos or unk token to pad with.")
        # Padded positions carry no loss and no attention, so reusing eos or unk is harmless.
        tokenizer.pad_token = fallback
    return tokenizer


def load_model(base_model: str, device: str, bf16: bool) -> PreTrainedModel:
    """Load the base model weights in bf16 on GPUs that support it, otherwise in float32."""
    options: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if device == "cuda":
        options["device_map"] = device
    try:
        try:
            return AutoModelForCausalLM.from_pretrained(base_model, attn_implementation="sdpa", **options)
        except ValueError as error:
            if "scaled_dot_product_attention" not in str(error):
                raise
            logger.info("The model %s has no SDPA attention, so it falls back to eager attention.", base_model)
            return AutoModelForCausalLM.from_pretrained(base_model, attn_implementation="eager", **options)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"Cannot load the model {base_model}: {_reason(error)}") from error


def training_arguments(hyperparameters: LoraHyperparameters, scratch_dir: Path, device: str,
                       bf16: bool) -> TrainingArguments:
    """Translate hyperparameters into Trainer arguments that log every step and save nothing."""
    max_steps = hyperparameters.max_steps
    return TrainingArguments(
        output_dir=str(scratch_dir),
        num_train_epochs=hyperparameters.num_epochs,
        max_steps=max_steps if max_steps is not None else -1,
        learning_rate=hyperparameters.learning_rate,
        per_device_train_batch_size=hyperparameters.batch_size,
        gradient_accumulation_steps=hyperparameters.gradient_accumulation_steps,
        # Values below 1 are a share of the total steps.
        warmup_steps=hyperparameters.warmup_ratio,
        lr_scheduler_type="linear",
        seed=hyperparameters.seed,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=bf16,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        include_num_input_tokens_seen="non_padding",
    )


def train(request: TrainingRequest, reporter: ProgressReporter) -> TrainingResult:
    """Train a LoRA adapter and publish it atomically to request.output_dir unless the reporter cancels."""
    check_request(request)
    hyperparameters = request.hyperparameters
    device = training_device()
    bf16 = device == "cuda" and supports_bf16()
    logger.info("Training a LoRA adapter for %s on %s in %s on %s.", request.base_model,
                request.dataset_path, "bf16" if bf16 else "float32", device)
    set_seed(hyperparameters.seed)
    tokenizer = load_tokenizer(str(request.base_model))
    dataset = load_dataset(Path(request.dataset_path), tokenizer, hyperparameters.max_seq_length)
    if len(dataset) == 0:
        raise TrainingConfigError([f"dataset: no record has a trainable token within max_seq_length "
                                   f"{hyperparameters.max_seq_length}"])
    try:
        return _train_and_publish(request, tokenizer, dataset, reporter, device, bf16)
    finally:
        # The model and optimizer died with _train_and_publish's frame, so their memory can go now.
        _release_memory(device)


def _train_and_publish(request: TrainingRequest, tokenizer: PreTrainedTokenizerBase, dataset: EncodedDataset,
                       reporter: ProgressReporter, device: str, bf16: bool) -> TrainingResult:
    """Load the model, train it, and publish the adapter unless the run was cancelled."""
    model = build_peft_model(load_model(str(request.base_model), device, bf16), request.hyperparameters)
    callback = ReporterCallback(reporter)
    metrics = _run_trainer(model, tokenizer, dataset, request.hyperparameters, callback, device, bf16)
    if callback.cancelled:
        logger.info("Training was cancelled after %s steps, so no adapter was written.", metrics["total_steps"])
        return TrainingResult("cancelled", None, metrics)
    output_dir = Path(request.output_dir)
    publish_adapter(model, tokenizer, metrics, output_dir)
    logger.info("Training finished after %s steps with mean loss %.4f, and the adapter is in %s.",
                metrics["total_steps"], metrics["train_loss"], output_dir)
    return TrainingResult("completed", output_dir, metrics)


def build_peft_model(model: PreTrainedModel, hyperparameters: LoraHyperparameters) -> PeftModel:
    """Wrap the base model with freshly initialised LoRA layers."""
    targets = resolve_target_modules(hyperparameters.target_modules, model.config.model_type)
    return get_peft_model(model, LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=hyperparameters.lora_rank,
        lora_alpha=hyperparameters.lora_alpha,
        lora_dropout=hyperparameters.lora_dropout,
        target_modules=targets,
    ))


def _run_trainer(model: PeftModel, tokenizer: PreTrainedTokenizerBase, dataset: EncodedDataset,
                 hyperparameters: LoraHyperparameters, callback: ReporterCallback, device: str,
                 bf16: bool) -> dict[str, Any]:
    """Run the Trainer in a scratch directory and return the run's metrics."""
    with tempfile.TemporaryDirectory(prefix="clara-train-") as scratch_dir:
        trainer = Trainer(
            model=model,
            args=training_arguments(hyperparameters, Path(scratch_dir), device, bf16),
            train_dataset=dataset,
            # Multiples of 8 let GPU tensor cores work on whole tiles.
            data_collator=CausalLMCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if device == "cuda" else None),
            callbacks=[callback],
        )
        # Progress goes through our callback and logger; the printer would write every step to stdout.
        trainer.remove_callback(PrinterCallback)
        output = trainer.train()
    tokens = int(trainer.state.num_input_tokens_seen)
    runtime = float(output.metrics.get("train_runtime", 0.0))
    trainable, total = model.get_nb_trainable_parameters()
    last = callback.last_progress
    adapted = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                      if isinstance(module, BaseTunerLayer)})
    return {
        "train_loss": float(output.training_loss),
        "last_loss": last.loss if last else None,
        "trained_tokens": tokens,
        "tokens_per_second": tokens / runtime if runtime > 0 else None,
        "train_runtime_seconds": runtime,
        "total_steps": int(trainer.state.global_step),
        "planned_steps": int(trainer.state.max_steps),
        "epochs": float(trainer.state.epoch or 0.0),
        "num_records": dataset.num_records,
        "num_examples": len(dataset),
        "skipped_records": dataset.skipped + dataset.rejected,
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "target_modules": adapted,
    }


def publish_adapter(model: PeftModel, tokenizer: PreTrainedTokenizerBase, metrics: dict[str, Any],
                    output_dir: Path) -> None:
    """Write adapter, tokenizer and metrics to <output_dir>.partial, then rename it to output_dir."""
    partial = output_dir.with_name(output_dir.name + ".partial")
    if partial.exists():
        logger.info("Removing the stale partial directory %s.", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        problems = _output_dir_problems(output_dir)
        if problems:
            raise FileExistsError(problems[0].removeprefix("output_dir: "))
        if output_dir.exists():
            output_dir.rmdir()
        os.replace(partial, output_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _release_memory(device: str) -> None:
    """Free the model's memory so a long-lived worker can run the next job."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
