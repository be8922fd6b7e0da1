"""Train a LoRA adapter on a causal language model with peft and the transformers Trainer."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import huggingface_hub
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
    set_seed,
)
from transformers.pytorch_utils import Conv1D

from trainers import loop
from trainers.checkpoints import CheckpointStore
from trainers.config import ALL_LINEAR, LoraHyperparameters, TrainingConfigError
from trainers.continuous import ParentJob, adapter_settings, parent_problems
from trainers.devices import supports_bf16, training_device
from trainers.evaluation import effective_interval, perplexity, planned_steps
from trainers.model_loading import from_pretrained
from trainers.progress import ProgressReporter, ReporterCallback
from trainers.quantization import load_quantized_model, quantization_problems
from trainers.record_format import InvalidDataset, dataset_problems
from trainers.training_data import TrainingData, prepare

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
METRICS_FILE = "metrics.json"
# Module types peft's LoRA can wrap; targeting anything else makes get_peft_model fail.
LORA_MODULE_TYPES = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                     torch.nn.MultiheadAttention, Conv1D)
MAX_REASON_LENGTH = 300
# Metrics and checkpoint key of the hub commit the base model was loaded from; None for a local directory.
REVISION_KEY = "base_model_revision"


class ModelLoadError(RuntimeError):
    """The base model or its tokenizer could not be loaded."""


class OutOfMemory(RuntimeError):
    """Training ran out of accelerator memory; the message says what to lower."""


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
    trainer_type: str = "lora"
    """lora, qlora (quantised base model) or continuous (start from `parent`'s adapter)."""
    validation_path: Path | None = None
    """JSONL file of held-out records; without it, hyperparameters.validation_split holds some out."""
    parent: ParentJob | None = None
    """The job a continuous job continues."""
    checkpoint_dir: Path | None = None
    """Where checkpoints go; a run finding one here resumes from it. None: no checkpoints."""
    cache_dir: Path | None = None
    """Where encoded datasets are cached; None: no cache."""
    max_evaluations: int = 200
    """Evaluations one run makes at most; a smaller eval_steps is raised to fit."""
    max_checkpoints: int = 100
    """Checkpoints one run saves at most; a smaller save_steps is raised to fit."""
    base_model_revision: str | None = None
    """Hub commit to load; None: the newest, which the run then pins in its checkpoints and metrics."""


@dataclass
class TrainingResult:
    """Outcome of a training job."""

    status: Literal["completed", "cancelled", "time_limit", "handed_back"]
    """Finished, cancelled, out of time or handed back by a worker shutting down (the last two after a checkpoint)."""
    adapter_dir: Path | None
    """Directory holding the adapter; None unless completed."""
    metrics: dict[str, Any]
    """Loss, throughput and size figures of the run."""


def quantization_bits(request: TrainingRequest) -> int | None:
    """Bits the base model is quantised to: qlora's setting (4 by default), a parent's, or None."""
    if request.trainer_type == "qlora":
        return request.hyperparameters.quantization_bits or 4
    if request.trainer_type == "continuous" and request.parent is not None:
        return request.parent.quantization_bits
    return None


def check_request(request: TrainingRequest) -> None:
    """Validate a request without loading weights; raise one TrainingConfigError listing every problem."""
    hyperparameters = request.hyperparameters
    problems = list(hyperparameters.problems()) + hyperparameters.trainer_type_problems(request.trainer_type)
    # The API checks only a sample at submission; this reads every line, and bad ones make it invalid_dataset.
    bad_records = [f"dataset: {problem}" for problem in dataset_problems(Path(request.dataset_path))]
    if request.validation_path is not None:
        bad_records.extend(f"validation: {problem}" for problem in dataset_problems(Path(request.validation_path)))
    problems.extend(bad_records)
    if request.validation_path is None and hyperparameters.early_stopping_patience \
            and not hyperparameters.validation_split:
        problems.append("early_stopping_patience: needs validation data; set validation_split or train on a "
                        "dataset with a validation split")
    problems.extend(_output_dir_problems(Path(request.output_dir)))
    if request.trainer_type == "continuous":
        problems.extend(parent_problems(request.parent, hyperparameters.replay_fraction))
    elif request.parent is not None:
        problems.append(f"parent_job_id: only continuous jobs have a parent, not {request.trainer_type} jobs")
    bits = quantization_bits(request)
    if bits is not None and not any(p.startswith("quantization_bits:") for p in problems):
        problems.extend(quantization_problems(bits, training_device()))
    config, problem = _load_config(str(request.base_model), _pinned_revision(request))
    if problem:
        problems.append(problem)
    elif request.trainer_type != "continuous" and not any(p.startswith("target_modules:") for p in problems):
        # A continuous job keeps its parent's target modules, which were checked when the parent ran.
        problems.extend(_architecture_problems(config, hyperparameters.target_modules))
    if problems:
        raise (InvalidDataset if bad_records else TrainingConfigError)(problems)


def _output_dir_problems(output_dir: Path) -> list[str]:
    """Refuse an output directory that already holds files, above all a finished adapter."""
    if (output_dir / ADAPTER_CONFIG).exists():
        return [f"output_dir: {output_dir} already holds an adapter"]
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        return [f"output_dir: {output_dir} already exists and is not an empty directory"]
    return []


def _load_config(base_model: str, revision: str | None = None) -> tuple[PretrainedConfig | None, str | None]:
    """Load the base model's configuration, or return a problem saying why it cannot be loaded."""
    looks_local = Path(base_model).is_absolute() or base_model.startswith((".", "~"))
    if looks_local and not Path(base_model).expanduser().is_dir():
        return None, f"base_model: cannot load {base_model} (no such directory)"
    try:
        return AutoConfig.from_pretrained(base_model, revision=revision), None
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


def resolve_revision(base_model: str, requested: str | None) -> str | None:
    """The hub commit tokenizer and weights are loaded from, so both come from one; None for a local directory."""
    if Path(base_model).expanduser().is_dir():
        return None
    try:
        # Offline, the cache's refs/ answer; a branch that moved on since is not followed then.
        resolved = huggingface_hub.resolve_revision(base_model, revision=requested,
                                                    local_files_only=huggingface_hub.constants.HF_HUB_OFFLINE)
    except (huggingface_hub.errors.RevisionResolutionError, huggingface_hub.errors.HfHubHTTPError, OSError) as error:
        # Loading reports a missing model better; a revision that cannot be resolved is loaded as asked.
        logger.warning("Could not resolve the revision %s of %s: %s", requested or "main", base_model, _reason(error))
        return requested
    return resolved.resolved


def load_tokenizer(base_model: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """Load the base model's tokenizer and make sure it can pad."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model, revision=revision)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"Cannot load the tokenizer of {base_model}: {_reason(error)}") from error
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelLoadError(f"The tokenizer of {base_model} has no pad, eos or unk token to pad with.")
        # Padded positions carry no loss and no attention, so reusing eos or unk is harmless.
        tokenizer.pad_token = fallback
    return tokenizer


def load_model(base_model: str, device: str, bf16: bool, revision: str | None = None) -> PreTrainedModel:
    """Load the base model weights in bf16 on GPUs that support it, otherwise in float32."""
    options: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if device == "cuda":
        options["device_map"] = device
    if revision is not None:
        options["revision"] = revision
    # torch.OutOfMemoryError is a RuntimeError, so it passes through to be reported as out_of_memory.
    try:
        return from_pretrained(base_model, options)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"Cannot load the model {base_model}: {_reason(error)}") from error


def train(request: TrainingRequest, reporter: ProgressReporter) -> TrainingResult:
    """Train an adapter and publish it atomically to request.output_dir unless the run stops early."""
    check_request(request)
    hyperparameters = request.hyperparameters
    device = training_device()
    bf16 = device == "cuda" and supports_bf16()
    bits = quantization_bits(request)
    logger.info("Training a %s adapter for %s on %s in %s on %s%s.", request.trainer_type, request.base_model,
                request.dataset_path, "bf16" if bf16 else "float32", device,
                f" with the base quantised to {bits} bits" if bits else "")
    set_seed(hyperparameters.seed)
    revision = resolve_revision(str(request.base_model), _pinned_revision(request))
    tokenizer = load_tokenizer(str(request.base_model), revision)
    data = prepare(Path(request.dataset_path), request.validation_path, request.parent, hyperparameters, tokenizer,
                   request.cache_dir)
    try:
        return _train_and_publish(request, tokenizer, data, reporter, device, bf16, bits, revision)
    except torch.OutOfMemoryError as error:
        _forget_frames(error)
        raise OutOfMemory(_out_of_memory_message(request, device)) from error
    except BaseException as error:
        _forget_frames(error)
        raise
    finally:
        # The model and optimizer died with _train_and_publish's frame, or with the cleared frames of the
        # traceback, so their memory can go now rather than when the caller drops the exception.
        _release_memory(device)


def _pinned_revision(request: TrainingRequest) -> str | None:
    """The revision asked for, else the one the attempt that wrote the newest checkpoint loaded."""
    if request.base_model_revision is not None or request.checkpoint_dir is None:
        return request.base_model_revision
    latest = CheckpointStore(Path(request.checkpoint_dir), request.hyperparameters.save_total_limit).latest()
    return latest.metrics.get(REVISION_KEY) if latest is not None else None


def _forget_frames(error: BaseException) -> None:
    """Clear the locals of every finished frame in an exception's tracebacks, its causes' included.

    A traceback keeps its frames alive, and their locals hold the model, the optimizer and batches: without this,
    accelerator memory stays taken for as long as anyone holds the exception.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending.extend((current.__cause__, current.__context__))


def _out_of_memory_message(request: TrainingRequest, device: str) -> str:
    """Say what to lower when training does not fit in memory."""
    hyperparameters = request.hyperparameters
    advice = (f"Lower batch_size (now {hyperparameters.batch_size}; raise gradient_accumulation_steps to keep the "
              f"effective batch) or max_seq_length (now {hyperparameters.max_seq_length})")
    if request.trainer_type == "lora":
        advice += ", or use trainer_type qlora, which quantises the base model"
    elif not hyperparameters.wants_gradient_checkpointing(quantization_bits(request) is not None):
        advice += ", or turn on gradient_checkpointing"
    return f"Loading or training the model ran out of {'GPU' if device == 'cuda' else 'CPU'} memory. {advice}."


def _train_and_publish(request: TrainingRequest, tokenizer: PreTrainedTokenizerBase, data: TrainingData,
                       reporter: ProgressReporter, device: str, bf16: bool, bits: int | None,
                       revision: str | None) -> TrainingResult:
    """Load the model, train it, and publish the adapter unless the run stopped before its end."""
    hyperparameters = request.hyperparameters
    store = CheckpointStore(Path(request.checkpoint_dir), hyperparameters.save_total_limit) \
        if request.checkpoint_dir is not None else None
    latest = None
    if store is not None:
        store.prepare()
        latest = store.latest()
    plan = _plan(request, data, store, latest.path if latest else None, device, bf16, bits)
    model = build_model(request, device, bf16, bits, plan.gradient_checkpointing, revision)
    callback = ReporterCallback(reporter, store, hyperparameters.early_stopping_patience)
    if revision is not None:
        callback.checkpoint_facts[REVISION_KEY] = revision
    if latest is not None:
        callback.restore_early_stopping(latest.path)
    train_collator, eval_collator = data.collators(tokenizer.pad_token_id, device)
    with tempfile.TemporaryDirectory(prefix="clara-train-") as scratch:
        trainer = loop.make_trainer(model, hyperparameters, plan, Path(scratch), data.train, data.validation,
                                    train_collator, eval_collator, callback)
        parent_before = loop.evaluate(trainer, data.parent_validation, "parent") if data.parent_validation else None
        output = loop.run(trainer, plan)
        metrics = _metrics(trainer, output, model, data, callback, plan, bits, request.trainer_type)
        metrics.update(data.step_size(hyperparameters.batch_size, hyperparameters.gradient_accumulation_steps))
        metrics[REVISION_KEY] = revision
        if callback.cancelled or callback.timed_out or callback.handed_back:
            status = "cancelled" if callback.cancelled else "time_limit" if callback.timed_out else "handed_back"
            logger.info("Training stopped (%s) after %s steps, so no adapter was written.", status,
                        metrics["total_steps"])
            return TrainingResult(status, None, metrics)
        if callback.restore_best(model):
            metrics.update(callback.best_eval, best_step=callback.best_step)
        _final_evaluations(trainer, data, callback, metrics, parent_before)
    if request.parent is not None:
        metrics.update(adapter_settings(request.parent.adapter_dir))
    output_dir = Path(request.output_dir)
    publish_adapter(model, tokenizer, metrics, output_dir)
    logger.info("Training finished after %s steps with mean loss %.4f, and the adapter is in %s.",
                metrics["total_steps"], metrics["train_loss"], output_dir)
    return TrainingResult("completed", output_dir, metrics)


def _plan(request: TrainingRequest, data: TrainingData, store: CheckpointStore | None, resume_from: Path | None,
          device: str, bf16: bool, bits: int | None) -> loop.LoopPlan:
    """How this run loops: its length, and evaluation and checkpoint intervals bounded per run."""
    hyperparameters = request.hyperparameters
    total_steps = planned_steps(len(data.train), hyperparameters.batch_size,
                                hyperparameters.gradient_accumulation_steps, hyperparameters.num_epochs,
                                hyperparameters.max_steps)
    eval_interval = effective_interval(hyperparameters.eval_steps, total_steps, request.max_evaluations)
    save_interval = effective_interval(hyperparameters.save_steps, total_steps, request.max_checkpoints)
    for name, requested, interval, limit in (("eval_steps", hyperparameters.eval_steps, eval_interval,
                                              request.max_evaluations),
                                             ("save_steps", hyperparameters.save_steps, save_interval,
                                              request.max_checkpoints)):
        if requested is not None and interval > requested:
            logger.info("%s %s would exceed %s per run of %s steps, so the run uses %s.", name, requested, limit,
                        total_steps, interval)
    return loop.LoopPlan(
        total_steps=total_steps, store=store, resume_from=resume_from, has_validation=data.validation is not None,
        gradient_checkpointing=hyperparameters.wants_gradient_checkpointing(bits is not None),
        device=device, bf16=bf16, eval_interval=eval_interval, save_interval=save_interval)


def _final_evaluations(trainer: loop.ClaraTrainer, data: TrainingData, callback: ReporterCallback,
                       metrics: dict[str, Any], parent_before: dict[str, float | None] | None) -> None:
    """Evaluate once more at the end unless the last step just did, and measure forgetting."""
    if data.validation is not None:
        evaluated_last_step = trainer.state.log_history and any(
            "eval_loss" in entry and entry.get("step") == trainer.state.global_step
            for entry in trainer.state.log_history)
        if not evaluated_last_step:
            trainer.evaluate()
        # After an early stop the published weights are the best evaluation's, already in metrics.
        if not callback.stopped_early:
            metrics.update(callback.last_eval)
    if parent_before is not None and data.parent_validation is not None:
        after = loop.evaluate(trainer, data.parent_validation, "parent")
        metrics["parent_eval_loss_before"] = parent_before["loss"]
        metrics["parent_eval_loss_after"] = after["loss"]
        if parent_before["loss"] is not None and after["loss"] is not None:
            metrics["forgetting"] = after["loss"] - parent_before["loss"]


def build_model(request: TrainingRequest, device: str, bf16: bool, bits: int | None,
                gradient_checkpointing: bool, revision: str | None = None) -> PeftModel:
    """The base model, quantised for qlora, with fresh LoRA layers or the parent's adapter on top."""
    base_model = str(request.base_model)
    if bits is not None:
        try:
            model = load_quantized_model(base_model, bits, device, bf16, gradient_checkpointing=gradient_checkpointing,
                                         revision=revision)
        except torch.OutOfMemoryError:
            raise  # a RuntimeError, but no fault of the model: train reports it as out_of_memory
        except (OSError, ValueError, KeyError, ImportError, RuntimeError) as error:
            raise ModelLoadError(f"Cannot load the model {base_model} in {bits} bits: {_reason(error)}") from error
    else:
        model = load_model(base_model, device, bf16, revision)
    # A cache only serves generation; in training it would also stop packed records being kept apart.
    model.config.use_cache = False
    if request.parent is None:
        return build_peft_model(model, request.hyperparameters)
    try:
        return PeftModel.from_pretrained(model, str(request.parent.adapter_dir), is_trainable=True)
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f"Cannot load the parent's adapter from {request.parent.adapter_dir}: "
                             f"{_reason(error)}") from error


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


def _metrics(trainer: loop.ClaraTrainer, output: Any, model: PeftModel, data: TrainingData,
             callback: ReporterCallback, plan: loop.LoopPlan, bits: int | None, trainer_type: str) -> dict[str, Any]:
    """The run's figures: loss, throughput, size, and what the data became."""
    runtime = float(output.metrics.get("train_runtime", 0.0))
    tokens = int(trainer.state.num_input_tokens_seen)
    tokens_this_attempt = tokens - callback.tokens_at_start
    # The log history survives a resume, unlike the Trainer's running loss total, so it gives the mean.
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trainable, total = model.get_nb_trainable_parameters()
    last = callback.last_progress
    adapted = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                      if isinstance(module, BaseTunerLayer)})
    return {
        "trainer_type": trainer_type,
        "train_loss": sum(losses) / len(losses) if losses else float(output.training_loss),
        "last_loss": last.loss if last else None,
        "trained_tokens": tokens,
        "tokens_per_second": tokens_this_attempt / runtime if runtime > 0 else None,
        "train_runtime_seconds": runtime,
        "total_steps": int(trainer.state.global_step),
        "planned_steps": int(trainer.state.max_steps),
        "resumed_from_step": _step_of(plan.resume_from),
        "epochs": float(trainer.state.epoch or 0.0),
        **data.counts,
        "packed": data.packed,
        "quantization_bits": bits,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "stopped_early": callback.stopped_early,
        "eval_interval": plan.eval_interval if plan.has_validation else None,
        "save_interval": plan.save_interval if plan.store is not None else None,
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "target_modules": adapted,
        **({"eval_loss": callback.last_eval.get("eval_loss"),
            "perplexity": perplexity(callback.last_eval.get("eval_loss"))} if callback.last_eval else {}),
    }


def _step_of(checkpoint: Path | None) -> int | None:
    """The step a checkpoint directory was saved at."""
    return int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint is not None else None


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
