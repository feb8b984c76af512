"""Decoding settings: one typed, validated object between users and ``generate``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, NamedTuple

from .messages import quote_value

STRATEGIES = ("greedy", "beam", "sample")

STRATEGY_FIELDS: dict[str, tuple[str, ...]] = {
    "greedy": (),
    "beam": ("num_beams", "length_penalty"),
    "sample": ("temperature", "top_p", "top_k"),
}
"""The settings only one strategy uses; the other strategies ignore them (and UIs hide them)."""


QUANTIZATIONS = ("none", "8bit", "4bit")
"""Weight quantization choices (``Kosmos2Engine.load(quantize=...)``, ``--quantize``); bitsandbytes for 8/4 bits."""


class SettingsError(ValueError):
    """A decoding value out of range or of the wrong type; names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class Range(NamedTuple):
    """Allowed values of one numeric field; UIs build their sliders from these."""

    kind: type
    low: float
    high: float
    low_inclusive: bool
    high_inclusive: bool


RANGES: dict[str, Range] = {
    "num_beams": Range(int, 1, 8, True, True),
    "length_penalty": Range(float, -5.0, 5.0, True, True),
    "temperature": Range(float, 0.0, 5.0, False, True),
    "top_p": Range(float, 0.0, 1.0, False, True),
    "top_k": Range(int, 0, 1000, True, True),
    "max_new_tokens": Range(int, 1, 1024, True, True),
    "min_new_tokens": Range(int, 0, 1024, True, True),
    "repetition_penalty": Range(float, 1.0, 3.0, True, True),
    "no_repeat_ngram_size": Range(int, 0, 10, True, True),
    "seed": Range(int, 0, 2**32 - 1, True, True),
}


@dataclass(frozen=True)
class DecodingSettings:
    """How text is decoded. Defaults follow the official demo (greedy, no 3-gram repeats).

    Every field is checked on construction, so an instance that exists is valid:

    >>> DecodingSettings(strategy="sample", temperature=0.7, top_p=0.9).generate_kwargs()["do_sample"]
    True
    >>> DecodingSettings(num_beams=1000)
    Traceback (most recent call last):
    ...
    kosmos_demo.settings.SettingsError: num_beams: must be between 1 and 8 (got 1000)
    """

    strategy: str = "greedy"
    num_beams: int = 3
    length_penalty: float = 1.0
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, str) or self.strategy not in STRATEGIES:
            choices = ", ".join(STRATEGIES)
            raise SettingsError("strategy", f"must be one of {choices} (got {quote_value(self.strategy)})")
        for name, (kind, low, high, low_in, high_in) in RANGES.items():
            value = _coerce(name, getattr(self, name), kind)
            ok_low = value >= low if low_in else value > low
            ok_high = value <= high if high_in else value < high
            if not (ok_low and ok_high):
                lo, hi = ("[" if low_in else "(") + f"{low}", f"{high}" + ("]" if high_in else ")")
                rule = f"between {low} and {high}" if low_in and high_in else f"in {lo}, {hi}"
                raise SettingsError(name, f"must be {rule} (got {quote_value(value)})")
            object.__setattr__(self, name, value)
        if self.strategy == "beam" and self.num_beams < 2:
            raise SettingsError("num_beams", "beam search needs at least 2 beams (use greedy for 1)")
        if self.min_new_tokens > self.max_new_tokens:
            raise SettingsError("min_new_tokens", f"must not exceed max_new_tokens ({self.max_new_tokens})")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "DecodingSettings":
        """Build from loose input (CLI, JSON, form fields); unknown keys are refused, None means default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            listed = ", ".join(sorted(known))
            raise SettingsError(quote_value(unknown[0]), f"is not a decoding setting (known: {listed})")
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``model.generate``; only what the strategy uses."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "num_beams": 1,
            "do_sample": False,
        }
        kwargs.update({name: getattr(self, name) for name in STRATEGY_FIELDS[self.strategy]})
        if self.strategy == "beam":
            kwargs["early_stopping"] = True
        elif self.strategy == "sample":
            kwargs["do_sample"] = True
        return kwargs

    @property
    def streams(self) -> bool:
        """Whether tokens can be shown as they are generated: beam search keeps several candidates to the end."""
        return self.strategy != "beam"


def _coerce(name: str, value: Any, kind: type) -> int | float:
    """Accept ints for floats and integral floats/strings for ints; refuse bools, NaN and the rest."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind is int and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise SettingsError(name, f"must be a number (got {quote_value(value)})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(name, f"must be a number (got {type(value).__name__} {quote_value(value)})")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(name, f"must be a finite number (got {quote_value(value)})")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise SettingsError(name, f"must be a whole number (got {quote_value(value)})")
        return int(value)
    return float(value)
