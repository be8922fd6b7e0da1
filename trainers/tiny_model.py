"""Build a tiny random Llama model and byte-level BPE tokenizer for tests and demos.

Usage: python -m trainers.tiny_model DIR [--corpus FILE ...] [--chat-template] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

VOCAB_SIZE = 1000
BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
SPECIAL_TOKENS = [BOS, EOS, UNK, PAD]

# Role headers are plain text so the vocabulary stays small; the assistant turn ends
# with eos so a model trained on it learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{% if messages %}{{ '\\n' }}{% endif %}{{ '<|assistant|>\\n' }}"
    "{% endif %}"
)

# Files a previous run may have left that would change how DIR loads.
STALE_FILES = (
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "generation_config.json",
    "config.json",
    "model.safetensors",
)

BUILTIN_CORPUS = """\
To register a new address, residents must visit the citizens' office within two weeks
of moving in. Please bring a valid identity card or passport and the confirmation of
residence signed by the landlord. The registration itself is free of charge.

An identity card is valid for ten years for applicants aged twenty-four and older. The
application requires a current biometric photograph, and the card is usually ready for
collection three to four weeks after the appointment. A lost card must be reported at once.

Residents of the inner city districts may apply for a parking permit for one vehicle
registered at their main residence. The permit costs a yearly fee and is issued for the
zone in which the applicant lives. Company cars need a written confirmation from the employer.

A building permit is required for new buildings, extensions and most changes of use.
The building authority checks the plans against the development plan and the state
building code. Incomplete applications delay the decision, so please submit all
documents, including the site plan and structural calculations, together.

Wer umzieht, muss sich innerhalb von zwei Wochen bei der Meldebehörde anmelden. Bitte
bringen Sie Ihren Personalausweis oder Reisepass sowie die Wohnungsgeberbestätigung mit.
Die Anmeldung ist gebührenfrei und kann in jedem Bürgerbüro der Stadt erledigt werden.

Der Personalausweis gilt für Personen ab vierundzwanzig Jahren zehn Jahre lang. Für den
Antrag wird ein aktuelles biometrisches Passfoto benötigt. Der neue Ausweis liegt in der
Regel nach drei bis vier Wochen zur Abholung bereit. Ein Verlust ist unverzüglich zu melden.

Bewohnerparkausweise erhalten Anwohnerinnen und Anwohner, deren Fahrzeug auf die
Hauptwohnung zugelassen ist. Der Ausweis gilt für die jeweilige Parkzone und wird für ein
Jahr ausgestellt. Für Dienstwagen ist eine Bescheinigung des Arbeitgebers erforderlich.

Für Neubauten, Anbauten und die meisten Nutzungsänderungen ist eine Baugenehmigung
erforderlich. Die Bauaufsichtsbehörde prüft den Antrag nach dem Bebauungsplan und der
Landesbauordnung. Unvollständige Unterlagen verzögern das Verfahren erheblich.

Das Fundbüro nimmt verlorene Gegenstände entgegen und bewahrt sie sechs Monate auf.
Hundesteuer ist für jeden Hund zu entrichten, der im Stadtgebiet gehalten wird. Anträge
auf Wohngeld können online gestellt werden; die Bearbeitung dauert etwa sechs Wochen.
"""


def corpus_lines(paths: Sequence[Path]) -> Iterator[str]:
    """Yield training text: the built-in corpus, then every string in the given files."""
    yield from BUILTIN_CORPUS.splitlines()
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                yield from _line_strings(line)


def _line_strings(line: str) -> Iterator[str]:
    """Yield the string values of a JSONL record, or the line itself when it is plain text."""
    stripped = line.strip()
    if not stripped:
        return
    if stripped.startswith("{"):
        try:
            yield from _json_strings(json.loads(stripped))
            return
        except json.JSONDecodeError:
            pass
    yield stripped


def _json_strings(value: object) -> Iterator[str]:
    """Yield every string nested anywhere inside a decoded JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_strings(item)


def build_tokenizer(corpus_files: Sequence[Path] = (), chat_template: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the corpus and wrap it for transformers."""
    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus_lines(corpus_files), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=2048,
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """Create a two-layer Llama model with seeded random weights sized to the tokenizer."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # The final norm bounds the hidden state and LoRA leaves lm_head alone, so with Llama's usual 0.02
        # the logits can hardly leave uniform; wider weights leave LoRA room to show that it learns.
        initializer_range=0.1,
    )
    # fork_rng keeps the caller's global random state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def make_tiny_model(
    out_dir: Path, corpus_files: Sequence[Path] = (), chat_template: bool = False, seed: int = 0
) -> Path:
    """Write a tiny model and its tokenizer into out_dir so from_pretrained loads both."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer([Path(path) for path in corpus_files], chat_template=chat_template)
    model = build_model(tokenizer, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in STALE_FILES:
        (out_dir / name).unlink(missing_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.info("Wrote a tiny model with %s tokens to %s.", len(tokenizer), out_dir)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and build the tiny model."""
    parser = argparse.ArgumentParser(prog="python -m trainers.tiny_model", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, metavar="DIR", help="directory to write the model into")
    parser.add_argument("--corpus", type=Path, action="append", default=[], metavar="FILE",
                        help="JSONL or plain text file to train the tokenizer on; may repeat")
    parser.add_argument("--chat-template", action="store_true", help="give the tokenizer a chat template")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    make_tiny_model(args.out_dir, args.corpus, chat_template=args.chat_template, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
