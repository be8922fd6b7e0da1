"""The GPU side of `make bench-training`: a 1B Llama with random weights, its model FLOPs, the GPU's peak."""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

# Dense bf16 peaks in FLOP/s, never the "with sparsity" figures; the first name the GPU's name contains wins.
BF16_PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("H100", 989e12),
                   ("H200", 989e12), ("A100", 312e12))
# A Llama 3.2 1B-shaped model; the vocabulary is 32,000 wide so the output layer costs what a real model's
# does, while the tiny tokenizer uses only its first ids.
GPU_MODEL_CONFIG = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 4096,
                    "tie_word_embeddings": False}

def build_gpu_model(tokenizer_dir: str, out_dir: str, seed: int) -> None:
    """Write the ~1.1 B-parameter Llama with seeded random bf16 weights and the tiny tokenizer to out_dir."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(**GPU_MODEL_CONFIG, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def model_flops_per_token(model_dir: str, lora: dict[str, Any], attention_length: float) -> dict[str, float]:
    """Model FLOPs per trained token of LoRA on a frozen base: 4N + 6 x LoRA parameters + 12 * L * d * T.

    N counts the base's parameters except the input embedding table (a lookup, no matmul); the output layer is
    included. A frozen base still needs the forward pass (2N) and the gradients with respect to its inputs (2N)
    but no weight gradients; the LoRA matrices need all three (6 per parameter). Attention has no weights, so its
    backward is all input gradients and it costs what it costs in full training: 4 * L * d * T forward and twice
    that backward, with T the record's own length (PaLM's convention, no discount for the causal mask), averaged
    per token as T = sum(length^2) / sum(length). Gradient-checkpoint recomputation and QLoRA dequantisation are
    not model FLOPs.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    base = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    if config.tie_word_embeddings:
        # The output layer shares the embedding's weights, so named_parameters listed it once, as the embedding.
        base += config.vocab_size * config.hidden_size
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, **lora))
    lora_parameters, _ = peft_model.get_nb_trainable_parameters()
    attention = 12 * config.num_hidden_layers * config.hidden_size * attention_length
    return {"base_parameters_n": base, "lora_parameters": lora_parameters,
            "attention_length_t": round(attention_length, 1),
            "flops_per_token": 4 * base + 6 * lora_parameters + attention}


def gpu_peak_flops(device: str, peak_tflops: float | None) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s: as given, else looked up by name; None on the CPU or when unknown."""
    if device != "cuda":
        return None
    if peak_tflops:
        return peak_tflops * 1e12
    name = torch.cuda.get_device_name(0)
    return next((value for key, value in BF16_PEAK_FLOPS if key in name), None)


def device_slug(device: str) -> str:
    """"cpu", or the GPU's name in lower case with dashes ("nvidia-h100-80gb-hbm3")."""
    if device != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
