"""Deterministic train/validation assignment by a keyed hash of each record's content."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Split = Literal["train", "validation"]
SPLITS: tuple[Split, ...] = ("train", "validation")
MAX_VALIDATION_FRACTION = 0.5
MAX_SEED = 2**32 - 1
_UNIT = 2.0**64


def canonical_json(record: Mapping[str, Any]) -> bytes:
    """Return a record's canonical UTF-8 JSON: sorted keys, no spacing, no ASCII escaping."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def assign_split(record: Mapping[str, Any], validation_fraction: float, seed: int) -> Split:
    """Return the split of a record, decided only by its content and the seed.

    The split does not depend on order or batching, and identical records always share a split,
    so duplicates can never leak from train into validation.
    """
    if validation_fraction <= 0:
        return "train"
    digest = hashlib.blake2b(canonical_json(record), digest_size=8, key=seed.to_bytes(8, "big")).digest()
    # 64 bits mapped to [0, 1) is uniform far beyond the precision a fraction can ask for.
    return "validation" if int.from_bytes(digest, "big") / _UNIT < validation_fraction else "train"


@dataclass
class SplitSpec:
    """The request's "split": the share of records held out for validation and the hash seed."""

    validation_fraction: float = 0.05
    """Share of records in the validation split, 0 to 0.5."""
    seed: int = 42
    """Key of the hash; another seed gives another, independent assignment."""
    input_problems: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """Problems found while reading the request: unknown keys, a value that is not an object."""

    @classmethod
    def from_dict(cls, data: object) -> SplitSpec:
        """Read a spec from the request's "split" value, filling defaults; problems() reports what is wrong."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            return cls(input_problems=(f"split: must be an object, not {type(data).__name__}",))
        known = ("validation_fraction", "seed")
        unknown = sorted(str(key) for key in data if key not in known)
        return cls(
            **{key: data[key] for key in known if key in data},
            input_problems=tuple(f"split.{key}: unknown key; use {', '.join(known)}" for key in unknown),
        )

    def problems(self) -> list[str]:
        """Return every problem as "split.<field>: message"; empty when valid."""
        found = list(self.input_problems)
        fraction = self.validation_fraction
        # bool is an int, but true as a fraction or seed is always a client mistake.
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
            found.append("split.validation_fraction: must be a number")
        elif not 0 <= fraction <= MAX_VALIDATION_FRACTION:
            found.append(f"split.validation_fraction: must be between 0 and {MAX_VALIDATION_FRACTION}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            found.append("split.seed: must be an integer")
        elif not 0 <= self.seed <= MAX_SEED:
            found.append(f"split.seed: must be between 0 and {MAX_SEED}")
        return found

    def assign(self, record: Mapping[str, Any]) -> Split:
        """Return the split of a record under this spec."""
        return assign_split(record, self.validation_fraction, self.seed)

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as the request spells it."""
        return {"validation_fraction": float(self.validation_fraction), "seed": self.seed}
