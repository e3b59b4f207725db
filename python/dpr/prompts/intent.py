"""What a prompt expresses: an `Intent` over attribute values."""

from __future__ import annotations

from dataclasses import dataclass

POLARITIES = ("positive", "negative", "neutral", "compound")
"""Intent kinds; `Episodes.polarity` indexes this tuple."""


@dataclass(frozen=True)
class Intent:
    """What a prompt asks for.

    `value` is the attribute value asked for (positive, compound) or refused (negative), in the
    dataset's spelling ("Sci-Fi", "Children's") of attribute `family`; `avoid` is the refused
    value of a compound intent, of `avoid_family` (default: the same family). `also` is a second
    asked value of another family, as a (family, value) pair, for a positive or compound
    intent ("a 90s comedy, but no romance": Comedy, also ("decade", "1990s"), avoid Romance).
    `values`, when given, is a *range*: a set of values of `family` asked for or refused
    together ("something older than 1980", "nothing recent"); `value` is then one of them (the
    one an episode is built around) and the rendering names the whole set, never `value` alone.
    Only positive and negative intents take a range. Neutral intents carry no value (a given
    `value` is ignored).
    """

    polarity: str
    value: str | None = None
    avoid: str | None = None
    family: str = "genre"
    avoid_family: str | None = None
    also: tuple[str, str] | None = None
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.polarity not in POLARITIES:
            raise ValueError(f"intent polarity must be one of {POLARITIES}, got {self.polarity!r}")
        if self.polarity in ("positive", "negative", "compound") and not self.value:
            raise ValueError(f"a {self.polarity} intent needs a value")
        if self.polarity == "compound" and not self.avoid:
            raise ValueError("a compound intent needs an avoid value")
        if self.values:
            if self.polarity not in ("positive", "negative") or self.also is not None:
                raise ValueError("only a positive or negative intent with no second value can "
                                 "name a range of values")
            if self.value not in self.values:
                raise ValueError(f"the value {self.value!r} is not in the range {self.values!r}")
        if self.also is not None:
            if self.polarity not in ("positive", "compound"):
                raise ValueError(f"a {self.polarity} intent cannot ask for a second value")
            if len(self.also) != 2 or self.also[0] == self.family:
                raise ValueError(f"also must be a (family, value) pair of another family than "
                                 f"{self.family!r}, got {self.also!r}")
            if tuple(self.also) == (self.avoid_family or self.family, self.avoid):
                raise ValueError(f"{self.also!r} cannot be both asked for and refused")
