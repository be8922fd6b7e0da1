"""`make bench-training`: Clara's trainer against the Trainer + peft loop a user would otherwise write.

In one run on one machine, with the same model, records, sequence length, steps and seed, each variant trains
in a process of its own (so its peak memory is its own) and is then evaluated on the same held-out records:

- plain-lora: transformers Trainer + peft LoraConfig with Clara's default LoRA settings, batches padded to the
  longest record, default TrainingArguments otherwise;
- clara-lora: trainers.lora.train with the same hyperparameters;
- clara-qlora-4bit (GPU only): Clara's QLoRA trainer on the 4-bit base.

Records are the first sections of ../shared/corpora/gesetze-paragraphs.jsonl.gz ("section\\n\\ntext"), or
generated mixed-length text when the corpus is absent. On the CPU the model is the tiny two-layer Llama; on a
GPU it is a Llama of about 1.1 B parameters with random weights (no hub download). Throughput counts non-padding
tokens only, from the end of the first step (the warm-up) to the end of the last; on the CPU each variant runs
one torch thread and the speedup target is judged on tokens per CPU second of its process, which other jobs on a
shared machine do not inflate (tokens per wall second and their ratio are reported as well). Each variant runs
`--repeats` times with seeds seed, seed+1, ...; figures are medians, the speedup the median of the paired ratios.
Writes benchmarks/results/training-<device>.json ("cpu", or the GPU's name such as "nvidia-h100-80gb-hbm3").
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import gzip
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    TrainerCallback,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpu_model import (  # noqa: E402
    GPU_MODEL_CONFIG,
    build_gpu_model,
    device_slug,
    gpu_peak_flops,
    model_flops_per_token,
)

from trainers.config import LoraHyperparameters  # noqa: E402
from trainers.data import IGNORE_INDEX, encode_record  # noqa: E402
from trainers.lora import resolve_target_modules  # noqa: E402
from trainers.progress import ProgressReporter  # noqa: E402
from trainers.tiny_model import make_tiny_model  # noqa: E402

logger = logging.getLogger("bench_training")

CORPUS = ROOT.parent / "shared" / "corpora" / "gesetze-paragraphs.jsonl.gz"
RESULTS_DIR = ROOT / "benchmarks" / "results"
EVAL_BATCH_SIZE = 8
TARGETS = {"cpu": {"speedup": 1.3}, "cuda": {"speedup": 1.5, "mfu": 0.35, "qlora_memory_ratio": 0.5}}
# Figures of Clara's own metrics worth keeping next to the measurements.
CLARA_METRICS = ("packed", "quantization_bits", "gradient_checkpointing", "tokens_per_second", "trained_tokens",
                 "epochs", "num_examples", "trainable_parameters")
WORDS = ("der", "die", "das", "und", "Behörde", "Antrag", "Absatz", "nach", "Maßgabe", "des", "Gesetzes", "wird",
         "ermächtigt", "durch", "Rechtsverordnung", "Bund", "Länder", "Frist", "Monaten", "zuständige", "Satz",
         "gilt", "entsprechend", "soweit", "nicht", "anderes", "bestimmt", "ist", "Verfahren", "Bescheid")


@dataclasses.dataclass
class BenchConfig:
    """What every variant of one benchmark run shares."""

    device: str
    """"cpu" or "cuda"."""
    steps: int
    """Optimizer steps per variant."""
    records: int
    """Training records taken from the corpus."""
    eval_records: int
    """Held-out records after the training records, for the eval loss."""
    max_seq_length: int
    """Tokens kept per record."""
    batch_size: int
    """Records per step for the plain loop, and Clara's batch_size hyperparameter."""
    repeats: int
    """Runs of each variant; repeat i uses seed + i."""
    seed: int
    """Seed of the first repeat."""
    packing: str
    """Clara's packing hyperparameter ("auto", "true", "false"), passed only when Clara knows it."""
    threads: int | None
    """torch intra-op threads in each variant's process; None leaves torch's default."""

    def hyperparameters(self, seed: int) -> dict[str, Any]:
        """Clara's hyperparameters for one run: its defaults except steps, batch, length and seed."""
        return {"max_steps": self.steps, "batch_size": self.batch_size, "max_seq_length": self.max_seq_length,
                "seed": seed}


def corpus_texts(count: int) -> list[str]:
    """Return the first `count` non-empty sections of the law corpus as "section\\n\\ntext"."""
    texts: list[str] = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        for line in handle:
            document = json.loads(line)
            if document.get("text", "").strip():
                texts.append(f"{document['section']}\n\n{document['text']}")
                if len(texts) == count:
                    break
    return texts


def generated_texts(count: int, seed: int) -> list[str]:
    """Return `count` deterministic pseudo-German texts whose lengths spread like the corpus's (median ~700 chars)."""
    rng = random.Random(seed)
    texts = []
    for number in range(count):
        words = max(3, min(4000, int(rng.lognormvariate(math.log(90), 1.0))))
        texts.append(f"§ {number + 1}\n\n" + " ".join(rng.choice(WORDS) for _ in range(words)) + ".")
    return texts


def write_records(texts: list[str], path: Path) -> None:
    """Write texts as {"text": ...} JSONL records."""
    with open(path, "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def encode_file(path: Path, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> list[dict[str, list[int]]]:
    """Encode a JSONL file with Clara's encode_record, so both loops train on identical tokens."""
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            example = encode_record(json.loads(line), tokenizer, max_seq_length)
            if example is not None:
                examples.append(example)
    return examples


class Mark(NamedTuple):
    """The clocks at the end of a step, with the non-padding tokens trained up to and including it."""

    step: int
    wall: float
    cpu: float
    tokens: int


def mark(step: int, tokens: int) -> Mark:
    """Read both clocks now."""
    return Mark(step, time.perf_counter(), time.process_time(), tokens)


def window_rates(first: Mark | None, last: Mark | None) -> dict[str, Any]:
    """Tokens per wall second and per CPU second of this process between two step ends; empty when none fit."""
    if first is None or last is None or last.wall <= first.wall:
        return {}
    tokens = last.tokens - first.tokens
    return {"tokens_per_second": tokens / (last.wall - first.wall),
            "tokens_per_cpu_second": tokens / (last.cpu - first.cpu) if last.cpu > first.cpu else None,
            "timed_steps": [first.step + 1, last.step]}


class TimingReporter(ProgressReporter):
    """Clara's progress reporter for the benchmark: timestamps every progress report, and never stops a run."""

    def __init__(self) -> None:
        self.marks: list[Mark] = []
        self.losses: list[tuple[int, float | None]] = []

    def report(self, progress: Any) -> None:
        """Record when a step was reported, with its tokens so far and its loss."""
        self.marks.append(mark(progress.step, progress.trained_tokens))
        self.losses.append((progress.step, progress.loss))


class CountingCollator:
    """Wraps a collator and records each batch's non-padding tokens (attention mask sums), on the host."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.tokens: list[int] = []

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate a batch and count its real tokens."""
        batch = self.collator(features)
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


class StepTimer(TrainerCallback):
    """Timestamps the end of the first and the last step (after a device sync) and keeps the logged losses."""

    def __init__(self, cuda: bool, collator: CountingCollator) -> None:
        self.cuda = cuda
        self.collator = collator
        self.marks: dict[int, Mark] = {}
        self.losses: list[tuple[int, float | None]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Time the first and last steps; the sync only happens on those two."""
        if state.global_step in (1, state.max_steps):
            if self.cuda:
                torch.cuda.synchronize()
            # The data loader collates a batch ahead, so count the batches of the steps done, not all collated.
            batches = state.global_step * args.gradient_accumulation_steps
            self.marks[state.global_step] = mark(state.global_step, sum(self.collator.tokens[:batches]))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        """Keep each logged training loss with its step."""
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))


def final_loss(losses: list[tuple[int, float | None]], steps: int) -> float | None:
    """Mean of the losses logged in the last tenth of the steps."""
    window = [loss for step, loss in losses if loss is not None and step > steps - max(1, steps // 10)]
    return statistics.fmean(window) if window else None


def load_options(device: str, quantization_bits: int | None) -> dict[str, Any]:
    """from_pretrained options of a variant: bf16 on the GPU, nf4 with double quantisation for QLoRA, fp32 on CPU."""
    if device != "cuda":
        return {"dtype": torch.float32}
    options: dict[str, Any] = {"dtype": torch.bfloat16, "device_map": "cuda"}
    if quantization_bits:
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantization_bits == 4, load_in_8bit=quantization_bits == 8, bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    return options


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process so far: torch.cuda.max_memory_allocated on the GPU, else peak RSS."""
    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def pad_rows(rows: list[dict[str, list[int]]], key: str, value: int, device: torch.device) -> torch.Tensor:
    """Right-pad one field of a batch of examples to its longest row."""
    length = max(len(row[key]) for row in rows)
    return torch.tensor([row[key] + [value] * (length - len(row[key])) for row in rows], device=device)


def eval_loss(spec: dict[str, Any], adapter_dir: Path) -> dict[str, float]:
    """Token-weighted cross-entropy of base + adapter on the held-out records, in padded batches."""
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    examples = encode_file(Path(spec["eval_path"]), tokenizer, spec["hyperparameters"]["max_seq_length"])
    base = AutoModelForCausalLM.from_pretrained(spec["model_dir"],
                                                **load_options(spec["device"], spec["quantization_bits"]))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), EVAL_BATCH_SIZE):
            batch = examples[start:start + EVAL_BATCH_SIZE]
            logits = model(input_ids=pad_rows(batch, "input_ids", pad, device),
                           attention_mask=pad_rows(batch, "attention_mask", 0, device)).logits
            labels = pad_rows(batch, "labels", IGNORE_INDEX, device)[:, 1:]
            total += torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                                       labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                                       reduction="sum").item()
            count += int((labels != IGNORE_INDEX).sum())
    return {"eval_loss": round(total / count, 5), "eval_tokens": count}


def run_plain(spec: dict[str, Any], work: Path) -> tuple[dict[str, Any], Path]:
    """Train with the loop a user would write: Trainer + peft LoraConfig, padding to the longest in the batch."""
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments, set_seed

    hp = spec["hyperparameters"]
    cuda = spec["device"] == "cuda"
    set_seed(hp["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = Dataset.from_list(encode_file(Path(spec["train_path"]), tokenizer, hp["max_seq_length"]))
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], **load_options(spec["device"], None))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, **spec["lora"]))
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding="longest"))
    timer = StepTimer(cuda, collator)
    args = TrainingArguments(
        output_dir=str(work / "plain-scratch"), max_steps=hp["max_steps"], per_device_train_batch_size=hp["batch_size"],
        learning_rate=spec["learning_rate"], seed=hp["seed"], use_cpu=not cuda, bf16=cuda,
        logging_steps=max(1, hp["max_steps"] // 10), save_strategy="no", report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[timer])
    # The printer writes each log line to stdout; Clara removes it too.
    trainer.remove_callback(PrinterCallback)
    output = trainer.train()
    steps = trainer.state.global_step
    tokens = sum(collator.tokens[:steps])
    runtime = float(output.metrics["train_runtime"])
    measured = {
        "tokens_per_second": tokens / runtime, "tokens_per_cpu_second": None, "timed_steps": [1, steps],
        **window_rates(timer.marks.get(1), timer.marks.get(steps)),
        "tokens_per_second_whole_run": tokens / runtime,
        "trained_tokens": tokens, "train_runtime_seconds": runtime, "total_steps": steps,
        "final_loss": final_loss(timer.losses, steps), "train_loss": float(output.training_loss),
        "peak_memory_mb": peak_memory_mb(spec["device"]),
    }
    adapter_dir = work / "plain-adapter"
    model.save_pretrained(adapter_dir)
    return measured, adapter_dir


def clara_request(spec: dict[str, Any], output_dir: Path) -> Any:
    """Build Clara's TrainingRequest, passing trainer_type, packing and quantization_bits only where Clara has them."""
    from trainers.lora import TrainingRequest

    hyperparameters = dict(spec["hyperparameters"])
    known = {field.name for field in dataclasses.fields(LoraHyperparameters)}
    if "packing" in known:
        hyperparameters["packing"] = {"true": True, "false": False}.get(spec["packing"], spec["packing"])
    if spec["quantization_bits"]:
        if "quantization_bits" not in known:
            raise NotImplementedError("Clara's LoraHyperparameters has no quantization_bits yet")
        hyperparameters["quantization_bits"] = spec["quantization_bits"]
    extra: dict[str, Any] = {}
    if "trainer_type" in {field.name for field in dataclasses.fields(TrainingRequest)}:
        extra["trainer_type"] = spec["trainer_type"]
    elif spec["trainer_type"] != "lora":
        raise NotImplementedError(f"Clara's TrainingRequest has no trainer_type, so no {spec['trainer_type']} yet")
    return TrainingRequest(base_model=spec["model_dir"], dataset_path=Path(spec["train_path"]), output_dir=output_dir,
                           hyperparameters=LoraHyperparameters.from_dict(hyperparameters), **extra)


def run_clara(spec: dict[str, Any], work: Path) -> tuple[dict[str, Any], Path]:
    """Train with Clara's trainer and time it from its progress reports."""
    from trainers.lora import train

    reporter = TimingReporter()
    result = train(clara_request(spec, work / "clara-adapter"), reporter)
    metrics = result.metrics
    steps = int(metrics["total_steps"])
    marks = reporter.marks
    measured = {
        "tokens_per_second": metrics["tokens_per_second"], "tokens_per_cpu_second": None, "timed_steps": [1, steps],
        **window_rates(marks[0] if marks else None, marks[-1] if marks else None),
        "tokens_per_second_whole_run": metrics["tokens_per_second"],
        "trained_tokens": int(metrics["trained_tokens"]), "train_runtime_seconds": metrics["train_runtime_seconds"],
        "total_steps": steps, "final_loss": final_loss(reporter.losses, steps),
        "train_loss": metrics["train_loss"], "peak_memory_mb": peak_memory_mb(spec["device"]),
        "clara": {key: metrics[key] for key in CLARA_METRICS if key in metrics},
    }
    return measured, Path(result.adapter_dir)


def run_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one variant in this (fresh) process; peak memory is taken before the evaluation."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_transformers()
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix=f"bench-{spec['name']}-") as tmp:
        try:
            runner = run_plain if spec["kind"] == "plain" else run_clara
            measured, adapter_dir = runner(spec, Path(tmp))
            # The trained model is unreachable now; free it before the evaluation loads the base model again.
            gc.collect()
            if spec["device"] == "cuda":
                torch.cuda.empty_cache()
            measured.update(eval_loss(spec, adapter_dir))
        except NotImplementedError as error:
            return {"skipped": str(error)}
        except Exception as error:  # One failing variant must not lose the others' figures.
            logger.exception("The variant %s failed.", spec["name"])
            return {"skipped": f"failed: {type(error).__name__}: {error}"}
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in measured.items()}


def quiet_transformers() -> None:
    """Silence the weight-loading progress bars and the over-long-record warnings of the tokenizer."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def in_child(function: Any, *args: Any) -> Any:
    """Call function in a fresh spawned process and return its result."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def variants(device: str) -> list[dict[str, Any]]:
    """The variants measured on a device."""
    if device == "cuda":
        return [{"name": "plain-lora-bf16", "kind": "plain", "trainer_type": "lora", "quantization_bits": None},
                {"name": "clara-lora-bf16", "kind": "clara", "trainer_type": "lora", "quantization_bits": None},
                {"name": "clara-qlora-4bit", "kind": "clara", "trainer_type": "qlora", "quantization_bits": 4}]
    return [{"name": "plain-lora", "kind": "plain", "trainer_type": "lora", "quantization_bits": None},
            {"name": "clara-lora", "kind": "clara", "trainer_type": "lora", "quantization_bits": None}]


def dataset_stats(lengths: list[int], batch_size: int, max_seq_length: int) -> dict[str, Any]:
    """Token lengths of the encoded training records, and the padding share of pad-to-longest batches in order."""
    padded = sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
                 for i in range(0, len(lengths), batch_size))
    ordered = sorted(lengths)
    return {"records": len(lengths), "tokens": sum(lengths), "mean_length": round(statistics.fmean(lengths), 1),
            "median_length": ordered[len(ordered) // 2], "max_length": ordered[-1],
            "truncated_records": sum(length >= max_seq_length for length in lengths),
            "padding_share_pad_to_longest": round(1 - sum(lengths) / padded, 3)}


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Medians over the repeats of each variant's figures, with every run kept."""
    summary = {}
    for name, results in runs.items():
        done = [result for result in results if "skipped" not in result]
        if not done:
            summary[name] = {"skipped": results[0]["skipped"]}
            continue
        medians = {key: round(statistics.median(result[key] for result in done), 4)
                   for key in ("tokens_per_second", "tokens_per_cpu_second", "tokens_per_second_whole_run",
                               "peak_memory_mb", "final_loss", "eval_loss")
                   if all(result.get(key) is not None for result in done)}
        summary[name] = {**medians, "runs": done}
    return summary


def judge(config: BenchConfig, summary: dict[str, dict[str, Any]], flops: dict[str, float],
          peak_flops: float | None) -> dict[str, Any]:
    """Speedup, loss agreement and (on GPU) MFU and QLoRA memory, each against its target; null "met" if unmeasured."""
    suffix = "-bf16" if config.device == "cuda" else ""
    plain, clara = summary[f"plain-lora{suffix}"], summary[f"clara-lora{suffix}"]
    targets = TARGETS[config.device]
    verdict: dict[str, Any] = {}
    if "runs" in plain and "runs" in clara:
        verdict["speedup"] = judge_speedup(config.device, plain["runs"], clara["runs"], targets["speedup"])
        verdict["eval_loss"] = judge_eval_loss(plain, clara)
    if config.device == "cuda":
        if peak_flops:
            for variant in summary.values():
                if "runs" in variant:
                    variant["mfu"] = round(variant["tokens_per_second"] * flops["flops_per_token"] / peak_flops, 4)
        if "mfu" in clara:
            verdict["mfu"] = {"value": clara["mfu"], "target": f">= {targets['mfu']}",
                              "met": clara["mfu"] >= targets["mfu"]}
        qlora = summary.get("clara-qlora-4bit", {})
        if "runs" in qlora and "runs" in clara:
            ratio = qlora["peak_memory_mb"] / clara["peak_memory_mb"]
            verdict["qlora_memory_ratio"] = {"value": round(ratio, 3), "target": f"<= {targets['qlora_memory_ratio']}",
                                             "met": ratio <= targets["qlora_memory_ratio"]}
    for name in [*targets, "eval_loss"]:
        verdict.setdefault(name, {"met": None, "why": "not measured: a variant was skipped or failed, or the GPU's "
                                                      "peak is unknown (--peak-tflops)"})
    return verdict


def judge_speedup(device: str, plain_runs: list[dict[str, Any]], clara_runs: list[dict[str, Any]],
                  target: float) -> dict[str, Any]:
    """Median of the per-repeat ratios of Clara's tokens/s to the plain loop's, against the target."""
    pairs = list(zip(plain_runs, clara_runs, strict=True))
    wall = [c["tokens_per_second"] / p["tokens_per_second"] for p, c in pairs]
    cpu = [c["tokens_per_cpu_second"] / p["tokens_per_cpu_second"] for p, c in pairs
           if c.get("tokens_per_cpu_second") and p.get("tokens_per_cpu_second")]
    # On the CPU, with one thread, CPU seconds are the work done, without the waits for a core that other jobs
    # on a shared machine cause; a GPU's work is not in this process's CPU time, so there wall time it is.
    ratios = cpu if device == "cpu" and len(cpu) == len(pairs) else wall
    speedup = statistics.median(ratios)
    return {"value": round(speedup, 3), "per_repeat": [round(r, 3) for r in ratios],
            "measure": "tokens per CPU second" if ratios is cpu else "tokens per second",
            "wall_clock_value": round(statistics.median(wall), 3), "wall_clock_per_repeat": [round(r, 3) for r in wall],
            "target": f">= {target}", "met": speedup >= target}


def judge_eval_loss(plain: dict[str, Any], clara: dict[str, Any]) -> dict[str, Any]:
    """Clara's held-out loss against the plain loop's, within the spread over seeds (at least 0.5%).

    Packed steps carry more tokens, so Clara may well end lower; only ending higher than the noise fails.
    """
    plain_evals = [run["eval_loss"] for run in plain["runs"]]
    noise = 2 * statistics.stdev(plain_evals) if len(plain_evals) > 1 else 0.0
    tolerance = max(noise, 0.005 * plain["eval_loss"])
    difference = clara["eval_loss"] - plain["eval_loss"]
    return {"clara_minus_plain": round(difference, 4), "tolerance": round(tolerance, 4),
            "within_noise": abs(difference) <= tolerance, "target": "clara <= plain + max(2 x stdev over seeds, 0.5%)",
            "met": difference <= tolerance}


def machine(device: str, threads: int | None) -> dict[str, Any]:
    """Describe the machine and the library versions."""
    import peft

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__, "peft": peft.__version__,
                            "device": "cpu", "torch_threads": threads or torch.get_num_threads()}
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update({"device": properties.name, "gpu_memory_gb": round(properties.total_memory / 2**30, 1),
                     "cuda": torch.version.cuda})
    return info


def prepare(config: BenchConfig, work: Path) -> tuple[str, Path, Path, str]:
    """Write the train and eval records and the model; return the model dir, the two paths and the data source."""
    total = config.records + config.eval_records
    if CORPUS.exists():
        texts, source = corpus_texts(total), CORPUS.name
    else:
        texts, source = generated_texts(total, config.seed), "generated"
    train_path, eval_path = work / "train.jsonl", work / "eval.jsonl"
    write_records(texts[:config.records], train_path)
    write_records(texts[config.records:], eval_path)
    tiny = make_tiny_model(work / "tiny-llama", corpus_files=[train_path])
    if config.device != "cuda":
        return str(tiny), train_path, eval_path, source
    in_child(build_gpu_model, str(tiny), str(work / "llama-1b"), config.seed)
    return str(work / "llama-1b"), train_path, eval_path, source


def parse_args(argv: list[str] | None) -> tuple[BenchConfig, argparse.Namespace]:
    """Read the command line; defaults depend on the device."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--steps", type=int, help="optimizer steps per variant (CPU 150, GPU 100)")
    parser.add_argument("--records", type=int, help="training records (default: 3 x steps x batch size)")
    parser.add_argument("--eval-records", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, help="tokens per record (CPU 512, GPU 1024)")
    parser.add_argument("--batch-size", type=int, help="records per step (CPU 4, GPU 8)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, seeds seed..seed+repeats-1")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--packing", choices=("auto", "true", "false"), default="auto",
                        help="Clara's packing hyperparameter, passed once Clara has it")
    parser.add_argument("--threads", type=int,
                        help="torch threads per variant (CPU default 1: steadier on a shared machine; GPU: torch's)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU, if not an H100/H200/A100")
    parser.add_argument("--output", type=Path, help="results file (default benchmarks/results/training-<device>.json)")
    args = parser.parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA GPU")
    gpu = device == "cuda"
    steps = args.steps or (100 if gpu else 150)
    batch_size = args.batch_size or (8 if gpu else 4)
    config = BenchConfig(device=device, steps=steps, records=args.records or 3 * steps * batch_size,
                         eval_records=args.eval_records, max_seq_length=args.max_seq_length or (1024 if gpu else 512),
                         batch_size=batch_size, repeats=args.repeats, seed=args.seed, packing=args.packing,
                         threads=args.threads or (None if gpu else 1))
    return config, args


def lora_settings(model_dir: str) -> dict[str, Any]:
    """Clara's default LoRA settings for this model, as peft LoraConfig arguments."""
    defaults = LoraHyperparameters()
    targets = resolve_target_modules(defaults.target_modules, AutoConfig.from_pretrained(model_dir).model_type)
    return {"r": defaults.lora_rank, "lora_alpha": defaults.lora_alpha, "lora_dropout": defaults.lora_dropout,
            "target_modules": targets}


def run_all(config: BenchConfig, model_dir: str, train_path: Path, eval_path: Path,
            lora: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Run every variant `repeats` times, each run in a fresh process, alternating the order."""
    runs: dict[str, list[dict[str, Any]]] = {variant["name"]: [] for variant in variants(config.device)}
    for repeat in range(config.repeats):
        seed = config.seed + repeat
        # Alternate the order so neither loop always runs on a machine warmed (or tired) by the other.
        order = variants(config.device) if repeat % 2 == 0 else variants(config.device)[::-1]
        for variant in order:
            spec = {**variant, "model_dir": model_dir, "train_path": str(train_path), "eval_path": str(eval_path),
                    "device": config.device, "hyperparameters": config.hyperparameters(seed), "lora": lora,
                    "learning_rate": LoraHyperparameters().learning_rate, "packing": config.packing,
                    "threads": config.threads}
            result = in_child(run_variant, spec)
            runs[variant["name"]].append({"seed": seed, **result})
            logger.info("Repeat %s, %s: %s", repeat + 1, variant["name"], result.get("skipped") or {
                key: result[key] for key in ("tokens_per_second", "tokens_per_cpu_second", "peak_memory_mb",
                                             "final_loss", "eval_loss")})
    return runs


def main(argv: list[str] | None = None) -> int:
    """Prepare the data and model, run every variant in its own process, and write the results."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_transformers()
    config, args = parse_args(argv)
    if config.device == "cpu":
        # Children inherit this, so Clara's trainer (which picks CUDA when it sees it) stays on the CPU too.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clara-bench-training-") as tmp:
        model_dir, train_path, eval_path, source = prepare(config, Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        lengths = [len(example["input_ids"]) for example in encode_file(train_path, tokenizer, config.max_seq_length)]
        lora = lora_settings(model_dir)
        flops = model_flops_per_token(model_dir, lora, sum(n * n for n in lengths) / sum(lengths))
        logger.info("Data: %s records from %s, %s tokens; model %s.", len(lengths), source, sum(lengths), model_dir)
        runs = run_all(config, model_dir, train_path, eval_path, lora)
    summary = summarise(runs)
    peak = gpu_peak_flops(config.device, args.peak_tflops)
    model = GPU_MODEL_CONFIG if config.device == "cuda" else "trainers.tiny_model (2-layer Llama, hidden 64)"
    results = {
        "machine": machine(config.device, config.threads), "measured_at": datetime.now(UTC).isoformat(),
        "seconds": round(time.perf_counter() - started, 1),
        "config": {**dataclasses.asdict(config), "data_source": source, "model": model, "lora": lora,
                   "learning_rate": LoraHyperparameters().learning_rate},
        "data": dataset_stats(lengths, config.batch_size, config.max_seq_length),
        "flops": {**flops, "peak_flops": peak},
        "variants": summary,
        "targets": judge(config, summary, flops, peak),
    }
    output = args.output or RESULTS_DIR / f"training-{device_slug(config.device)}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("Targets: %s", json.dumps(results["targets"]))
    logger.info("Wrote %s in %s seconds.", output, results["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
