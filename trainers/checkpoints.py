"""Checkpoints that are complete or absent: written to a staging directory, renamed into place."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
STAGING = ".staging"
METADATA_FILE = "clara_checkpoint.json"
# The Trainer writes these; a checkpoint without them cannot resume training.
REQUIRED_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint on disk."""

    step: int
    path: Path
    created_at: str
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint as the API and the job record show it."""
        return {"id": self.path.name, "step": self.step, "created_at": self.created_at, "metrics": self.metrics}


class CheckpointStore:
    """The checkpoints of one job: <directory>/checkpoint-<step>, each whole, at most `limit` kept."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = Path(directory)
        self.limit = limit
        self.last_pruned: list[int] = []
        """Steps of the checkpoints the latest publish deleted."""

    @property
    def staging(self) -> Path:
        """Where the Trainer writes a checkpoint before it counts; never read to resume."""
        return self.directory / STAGING

    def prepare(self) -> None:
        """Create the directory and drop whatever a dead attempt left half-written in staging."""
        if self.staging.exists():
            logger.info("Removing unfinished checkpoint files in %s.", self.staging)
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)

    def list(self) -> list[Checkpoint]:
        """Every complete checkpoint, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_dir() and not path.is_symlink():
                checkpoint = _read(path, int(match.group(1)))
                if checkpoint is not None:
                    found.append(checkpoint)
        return sorted(found, key=lambda checkpoint: checkpoint.step)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, or None."""
        checkpoints = self.list()
        return checkpoints[-1] if checkpoints else None

    def publish(self, step: int, created_at: str, metrics: dict[str, Any], keep: int | None = None) -> Checkpoint:
        """Move staging/checkpoint-<step>, written by the Trainer, into place; then prune old ones but `keep`'s."""
        staged = self.staging / f"{PREFIX}{step}"
        missing = [name for name in REQUIRED_FILES if not (staged / name).is_file()]
        if missing:
            raise FileNotFoundError(f"checkpoint at step {step} lacks {', '.join(missing)}")
        metadata = {"step": step, "created_at": created_at, "metrics": metrics}
        with open(staged / METADATA_FILE, "w", encoding="utf-8") as handle:
            json.dump(metadata, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        final = self.directory / staged.name
        if final.exists():
            # A resumed attempt can reach a step an earlier attempt already saved: the newer one wins.
            shutil.rmtree(final)
        os.replace(staged, final)
        _fsync_directory(self.directory)
        logger.info("Checkpoint at step %s is complete in %s.", step, final)
        self.last_pruned = self.prune(keep)
        return Checkpoint(step, final, created_at, metrics)

    def prune(self, keep: int | None = None) -> list[int]:
        """Delete the oldest complete checkpoints beyond the limit, never the one at step `keep`; return their steps.

        Early stopping passes the step of the best evaluation so far, whose weights it may still publish.
        """
        checkpoints = self.list()
        removed = []
        for checkpoint in checkpoints[: max(0, len(checkpoints) - self.limit)]:
            if checkpoint.step == keep:
                continue
            # Renaming first makes the deletion atomic for readers: the name vanishes at once.
            doomed = self.staging / f"deleting-{checkpoint.path.name}"
            os.replace(checkpoint.path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(checkpoint.step)
        return removed

    def remove_all(self) -> None:
        """Delete every checkpoint of the job, once its adapter is published."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _read(path: Path, step: int) -> Checkpoint | None:
    """Read a checkpoint's metadata; None for a directory that is not a complete checkpoint."""
    try:
        metadata = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if any(not (path / name).is_file() for name in REQUIRED_FILES):
        return None
    return Checkpoint(step, path, str(metadata.get("created_at", "")), dict(metadata.get("metrics") or {}))


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
