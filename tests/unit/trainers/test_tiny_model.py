"""Tests for the tiny local model used by tests and the demo."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers.tiny_model import main, make_tiny_model


def test_tiny_model_loads_with_auto_classes(chat_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    model = AutoModelForCausalLM.from_pretrained(chat_model_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == (
        "<s>", "</s>", "<unk>", "<pad>")
    assert 900 <= len(tokenizer) <= 1000
    assert model.config.vocab_size == len(tokenizer)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_key_value_heads) == (64, 2, 2)
    assert model.config.tie_word_embeddings is False
    assert tokenizer.decode(tokenizer("Wohnungsgeberbestätigung für die Anmeldung")["input_ids"]) == (
        "Wohnungsgeberbestätigung für die Anmeldung")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hallo"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<s><|user|>\nHallo\n<|assistant|>\n"


def test_weights_depend_only_on_the_seed(tmp_path: Path) -> None:
    first = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "a", seed=3))
    second = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "b", seed=3))
    third = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "c", seed=4))
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(first.state_dict()[weight], second.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], third.state_dict()[weight])


def test_command_line_overwrites_a_previous_model(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Sperrmüllabholung Sperrmüllabholung Sperrmüllabholung\n", encoding="utf-8")
    out_dir = tmp_path / "model"
    assert main([str(out_dir), "--chat-template", "--seed", "5"]) == 0
    assert AutoTokenizer.from_pretrained(out_dir).chat_template
    assert main([str(out_dir), "--corpus", str(corpus)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert not tokenizer.chat_template
    assert "Sperrmüllabholung" in tokenizer.decode(tokenizer("Sperrmüllabholung")["input_ids"])
    assert len(tokenizer.tokenize("Sperrmüllabholung")) <= 3
