"""What a prompt expresses: an `Intent` over one attribute family's values."""

from __future__ import annotations

from dataclasses import dataclass

POLARITIES = ("positive", "negative", "neutral", "compound")
"""Intent kinds; `Episodes.polarity` indexes this tuple."""


@dataclass(frozen=True)
class Intent:
    """What a prompt asks for.

    `value` is the attribute value asked for (positive, compound) or refused (negative), in the
    dataset's spelling ("Sci-Fi", "Children's") of attribute `family`; `avoid` is the refused
    value of a compound intent, of `avoid_family` (default: the same family). Neutral intents
    carry no value (a given `value` is ignored).
    """

    polarity: str
    value: str | None = None
    avoid: str | None = None
    family: str = "genre"
    avoid_family: str | None = None

    def __post_init__(self) -> None:
        if self.polarity not in POLARITIES:
            raise ValueError(f"intent polarity must be one of {POLARITIES}, got {self.polarity!r}")
        if self.polarity in ("positive", "negative", "compound") and not self.value:
            raise ValueError(f"a {self.polarity} intent needs a value")
        if self.polarity == "compound" and not self.avoid:
            raise ValueError("a compound intent needs an avoid value")
