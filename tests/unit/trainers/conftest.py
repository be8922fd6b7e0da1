"""Shared fixtures for the trainers tests: tiny local models, datasets and a recording reporter."""

from __future__ import annotations

import os

# Set before transformers and huggingface_hub are imported, which read it once at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from trainers.progress import ProgressReporter, TrainingProgress
from trainers.tiny_model import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[3]
DEMO_DATASET = REPO_ROOT / "examples" / "demo-train.jsonl"

SAMPLE_RECORDS: list[dict[str, Any]] = [
    {"text": "Die Anmeldung des Wohnsitzes ist innerhalb von zwei Wochen nach dem Einzug fällig."},
    {"instruction": "Wie lange gilt der Personalausweis?", "input": "",
     "output": "Ab 24 Jahren gilt der Personalausweis zehn Jahre."},
    {"instruction": "Translate into English.", "input": "Bewohnerparkausweis",
     "output": "Residents' parking permit"},
    {"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Do I need a permit for a garden shed?"},
        {"role": "assistant", "content": "Small sheds are often exempt, but check the development plan."},
        {"role": "user", "content": "Who can tell me for sure?"},
        {"role": "assistant", "content": "The building authority."},
    ]},
    {"messages": [
        {"role": "user", "content": "Wo melde ich meinen Hund an?"},
        {"role": "assistant", "content": "Bei der Steuerverwaltung der Stadt."},
    ]},
]


class RecordingReporter(ProgressReporter):
    """Keeps every report; asks to stop after `stop_after` steps, or says time is up after `time_up_after`."""

    def __init__(self, stop_after: int | None = None, time_up_after: int | None = None) -> None:
        self.reports: list[TrainingProgress] = []
        self.evaluations: list[tuple[int, dict[str, float | None]]] = []
        self.checkpoints: list[tuple[Any, list[int]]] = []
        self.stop_after = stop_after
        self.time_up_after = time_up_after

    def report(self, progress: TrainingProgress) -> None:
        self.reports.append(progress)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.reports) >= self.stop_after

    def out_of_time(self) -> bool:
        return self.time_up_after is not None and len(self.reports) >= self.time_up_after

    def evaluated(self, step: int, metrics: dict[str, float | None]) -> None:
        self.evaluations.append((step, metrics))

    def checkpoint_saved(self, checkpoint: Any, pruned_steps: list[int]) -> None:
        self.checkpoints.append((checkpoint, pruned_steps))

    @property
    def losses(self) -> list[tuple[int, float | None]]:
        """(step, loss) of every report."""
        return [(progress.step, progress.loss) for progress in self.reports]


def write_jsonl(path: Path, lines: Iterable[dict[str, Any] | str]) -> Path:
    """Write records (dicts) or raw lines (strings) to a JSONL file."""
    text = "".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def plain_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose tokenizer has no chat template."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-plain"), [DEMO_DATASET], seed=1)


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose tokenizer has a chat template."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-chat"), [DEMO_DATASET], chat_template=True, seed=2)


@pytest.fixture(scope="session")
def plain_tokenizer(plain_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(plain_model_dir)


@pytest.fixture(scope="session")
def chat_tokenizer(chat_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(chat_model_dir)


@pytest.fixture(scope="session")
def sample_records() -> list[dict[str, Any]]:
    """One record of each shape, in German and English, including a multi-turn conversation."""
    return SAMPLE_RECORDS


@pytest.fixture(scope="session")
def demo_dataset() -> Path:
    """The example dataset shipped with the repository."""
    return DEMO_DATASET


@pytest.fixture(scope="session")
def reporter_factory() -> Callable[..., RecordingReporter]:
    """Return the RecordingReporter class so tests can build reporters without importing conftest."""
    return RecordingReporter


@pytest.fixture
def jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Return a function that writes lines to a fresh JSONL file in tmp_path."""
    counter = iter(range(1_000_000))

    def make(lines: Iterable[dict[str, Any] | str], name: str | None = None) -> Path:
        return write_jsonl(tmp_path / (name or f"data-{next(counter)}.jsonl"), lines)

    return make
