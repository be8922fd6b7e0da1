"""QLoRA on the CPU for real: the tiny model quantised by bitsandbytes, trained with LoRA, saved and reloaded."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding, PreTrainedModel

from trainers.quantization import QUANTIZATION_BITS, load_quantized_model, quantization_config, quantization_problems

# peft's get_peft_model reads transformers' deprecated is_gradient_checkpointing; nothing Clara can change.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

QUANTIZED_LINEAR = {4: bnb.nn.Linear4bit, 8: bnb.nn.Linear8bitLt}
TEXTS = [
    "Wer umzieht, muss sich innerhalb von zwei Wochen bei der Meldebehörde anmelden.",
    "A building permit is required for new buildings, extensions and most changes of use.",
]
LEARNING_RATE = 1e-2


@pytest.fixture(scope="module")
def batch(tiny_model_dir: Path) -> BatchEncoding:
    """A fixed padded batch of two sentences whose padding carries no loss."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded = tokenizer(TEXTS, return_tensors="pt", padding=True)
    labels = encoded["input_ids"].clone()
    labels[encoded["attention_mask"] == 0] = -100
    encoded["labels"] = labels
    return encoded


def with_lora(model: PreTrainedModel) -> PeftModel:
    """Wrap a model with seeded LoRA layers on the attention query and value projections."""
    torch.manual_seed(0)
    return get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj"]))


def train_steps(model: PeftModel, batch: BatchEncoding, steps: int,
                optimizer: torch.optim.Optimizer | None = None) -> list[float]:
    """Run AdamW steps on the fixed batch and return the loss before each step."""
    optimizer = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def eval_logits(model: torch.nn.Module, batch: BatchEncoding) -> torch.Tensor:
    """Logits of an evaluation-mode forward pass without gradients, as in an evaluation or inference."""
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("bf16, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_4_bit_config_is_nf4_with_double_quantisation(bf16: bool, dtype: torch.dtype) -> None:
    config = quantization_config(4, bf16)

    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype == dtype


def test_8_bit_config_is_llm_int8() -> None:
    config = quantization_config(8, bf16=True)

    assert config.load_in_8bit and not config.load_in_4bit


def test_config_refuses_other_widths() -> None:
    with pytest.raises(ValueError, match="quantization_bits"):
        quantization_config(16, bf16=False)


@pytest.mark.parametrize("bits", QUANTIZATION_BITS)
def test_both_widths_are_supported_on_the_cpu(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("quantization_problems loaded a model")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_loading)

    assert quantization_problems(bits, "cpu") == []


@pytest.mark.parametrize("bits", [3, 16, True])
def test_problems_name_an_unsupported_width(bits: int) -> None:
    problems = quantization_problems(bits, "cpu")

    assert len(problems) == 1 and problems[0].startswith("quantization_bits: must be 4 or 8")


def test_problems_name_missing_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import bitsandbytes` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)

    problems = quantization_problems(4, "cpu")

    assert len(problems) == 1 and problems[0].startswith("quantization_bits:")
    assert "install bitsandbytes" in problems[0]


def test_problems_name_a_device_bitsandbytes_does_not_run_on() -> None:
    assert quantization_problems(4, "tpu") == ["quantization_bits: bitsandbytes "
                                               f"{bnb.__version__} cannot quantise on tpu"]


def test_problems_name_a_missing_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    problems = quantization_problems(8, "cuda")

    assert len(problems) == 1 and "needs a CUDA GPU" in problems[0]


def test_problems_name_a_gpu_too_old_for_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (5, 2))

    problems = quantization_problems(4, "cuda")

    assert len(problems) == 1 and "compute capability 6.0 or newer, and this one has 5.2" in problems[0]


@pytest.mark.parametrize("bits", QUANTIZATION_BITS)
def test_decoder_linear_layers_are_quantised_and_frozen(bits: int, tiny_model_dir: Path) -> None:
    model = load_quantized_model(str(tiny_model_dir), bits, "cpu", bf16=False)
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)

    linear = {name: module for name, module in model.model.layers.named_modules()
              if isinstance(module, torch.nn.Linear)}
    assert len(linear) == 2 * 7
    for name, module in linear.items():
        assert isinstance(module, QUANTIZED_LINEAR[bits]), name
        weight = module.weight
        # Packed storage: two 4-bit values per byte, or one int8 per weight, against 4 bytes in float32.
        assert weight.numel() * weight.element_size() == module.in_features * module.out_features * bits // 8, name
    assert type(model.lm_head) is torch.nn.Linear
    assert model.get_memory_footprint() < full.get_memory_footprint()
    assert not any(parameter.requires_grad for parameter in model.parameters())


@pytest.mark.parametrize("bits", QUANTIZATION_BITS)
def test_gradient_checkpointing_is_on_by_default(bits: int, tiny_model_dir: Path) -> None:
    model = load_quantized_model(str(tiny_model_dir), bits, "cpu", bf16=False)

    assert model.is_activation_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    assert model.config.use_cache is False


def test_gradient_checkpointing_can_be_turned_off(tiny_model_dir: Path) -> None:
    model = load_quantized_model(str(tiny_model_dir), 4, "cpu", bf16=False, gradient_checkpointing=False)

    assert not model.is_activation_checkpointing


@pytest.mark.parametrize("bits", QUANTIZATION_BITS)
def test_training_lowers_the_loss_and_changes_only_lora_weights(bits: int, tiny_model_dir: Path,
                                                                 batch: BatchEncoding) -> None:
    model = with_lora(load_quantized_model(str(tiny_model_dir), bits, "cpu", bf16=False))
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    losses = train_steps(model, batch, steps=8)

    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert losses[-1] < losses[0] - 0.5, losses
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    # Every LoRA matrix, in the first layer too, learnt: gradients pass through the frozen quantised layers.
    assert changed == trainable


@pytest.mark.parametrize("bits", QUANTIZATION_BITS)
def test_an_evaluation_between_steps_does_not_stop_training(bits: int, tiny_model_dir: Path,
                                                            batch: BatchEncoding) -> None:
    # On AVX512-BF16 CPUs bitsandbytes would repack 4-bit weights here, failing on the tiny model's
    # 176-wide MLP, and the packed kernel has no backward, so later steps would not learn.
    model = with_lora(load_quantized_model(str(tiny_model_dir), bits, "cpu", bf16=False))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    first = train_steps(model, batch, steps=2, optimizer=optimizer)

    eval_logits(model, batch)
    later = train_steps(model, batch, steps=4, optimizer=optimizer)

    first_layer_lora = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    model(**batch).loss.backward()
    assert first_layer_lora.grad is not None and first_layer_lora.grad.abs().sum() > 0
    assert later[-1] < later[0] < first[0], (first, later)


@pytest.mark.parametrize("bits", QUANTIZATION_BITS)
def test_adapter_reloads_onto_a_fresh_quantised_base(bits: int, tiny_model_dir: Path, batch: BatchEncoding,
                                                     tmp_path: Path) -> None:
    model = with_lora(load_quantized_model(str(tiny_model_dir), bits, "cpu", bf16=False))
    train_steps(model, batch, steps=4)
    trained = eval_logits(model, batch)
    model.save_pretrained(tmp_path)

    base = load_quantized_model(str(tiny_model_dir), bits, "cpu", bf16=False)
    untrained = eval_logits(base, batch)
    reloaded = eval_logits(PeftModel.from_pretrained(base, tmp_path), batch)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.md", "adapter_config.json",
                                                                "adapter_model.safetensors"]
    assert not torch.allclose(trained, untrained, atol=1e-3)
    torch.testing.assert_close(reloaded, trained)


def test_int8_cast_notes_are_dropped_but_other_bitsandbytes_logs_are_kept(caplog: pytest.LogCaptureFixture,
                                                                           tiny_model_dir: Path,
                                                                           batch: BatchEncoding) -> None:
    model = load_quantized_model(str(tiny_model_dir), 8, "cpu", bf16=False)
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")

    with caplog.at_level("WARNING", logger="bitsandbytes.autograd._functions"):
        eval_logits(model, batch)
        bnb_logger.warning("something else")

    # Other tests may have configured Clara's loggers to propagate at INFO; only bitsandbytes' records count here.
    notes = [record.getMessage() for record in caplog.records if record.name.startswith("bitsandbytes")]
    assert notes == ["something else"]
