"""The compositional prompt generator: a small grammar, kept as data, rendered into sentences.

The grammar (`grammar.json` beside this module, or a file of the same format) holds request,
refusal and neutral frames, free-description frames, compound clauses and connectors, hedges,
time and context phrases, and per attribute family the value names, noun forms and free
descriptions that never name the value. Every piece belongs to one split ("train", "valid",
"heldout"), so a held-out rendering uses forms that training never saw, not only new fillings
of trained ones. `docs/prompts.md` describes the format.

Ranges name several values of an ordered family at once: relative frames ("older than {year}",
"nothing newer than the {value}") and eras ("a recent film", "old black-and-white classics").

`Grammar.render(intent, rng, split=...)` turns an `Intent` into a `Rendering`: the sentence, the
frame it came from and its labels, one `(family, value, "asked" | "refused")` per value it names.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from dpr.prompts.intent import Intent

SPLITS = ("train", "valid", "heldout")
FRAME_POLARITIES = ("asked", "refused", "neutral")
STYLES = ("name", "description")
"""How a value is expressed: by one of its names, or by a free description."""

DEFAULT_GRAMMAR = Path(__file__).with_name("grammar.json")
_FORMAT = "dpr-prompt-grammar"
_SLOT = re.compile(r"(?:\b([Aa]) )?\{(\w+)\}")
_VALUE_SLOTS = {"value", "thing", "description"}
_RANGE_SLOTS = {"value", "year"}
RELATIONS = ("before", "until", "from", "after")
"""How a relative frame's boundary value D picks values of an ordered family: strictly before D,
up to and including D, from D on, strictly after D."""
_AVOID_SLOTS = {"avoid", "avoid_thing"}
_ALWAYS = {"noun", "nouns", "context"}


@dataclass(frozen=True)
class Frame:
    """One sentence form: `text` with slots, the split it belongs to, and the phrase that carries
    its polarity (`cue`). `kind` is "frame", "description", "clause" or "connector"."""

    id: str
    split: str
    polarity: str
    text: str
    cue: str = ""
    kind: str = "frame"
    families: tuple[str, ...] = ()
    """The attribute families whose values this form reads naturally with ("Something from
    the {value}" suits decades, not genres); empty: every family."""
    relation: str = ""
    """For a relative frame (kind "range"): which values its boundary picks (`RELATIONS`)."""

    @property
    def slots(self) -> set[str]:
        return {m.group(2) for m in _SLOT.finditer(self.text)}

    def suits(self, family: str) -> bool:
        """Whether a value of `family` may fill this form."""
        return not self.families or family in self.families


@dataclass(frozen=True)
class ValueForms:
    """How prompts may name one attribute value."""

    names: tuple[str, ...]
    """Forms that work as a modifier before a noun ("action", "action-packed")."""
    nouns: tuple[str, ...] = ()
    """Forms that stand alone as a noun phrase ("comedies", "westerns")."""
    descriptions: tuple[str, ...] = ()
    """Noun phrases that describe the value without naming it."""
    year: str = ""
    """The first year the value covers ("1980" for the 1980s): the `{year}` of relative
    frames; empty for values of unordered families."""


@dataclass(frozen=True)
class Era:
    """A named range of an ordered family ("recent": the 1990s and 2000s)."""

    id: str
    split: str
    values: tuple[str, ...]
    names: tuple[str, ...]
    """Modifiers ("recent", "black-and-white")."""
    nouns: tuple[str, ...] = ()
    """Stand-alone noun phrases ("old black-and-white classics")."""


@dataclass(frozen=True)
class Family:
    """An attribute family the prompts talk about (genre, decade, ...)."""

    name: str
    values: dict[str, ValueForms]
    things: tuple[str, ...] = ("{name} {nouns}",)
    """Patterns that make a noun phrase of a value name ({name}, {noun}, {nouns})."""
    eras: tuple[Era, ...] = ()
    present: tuple[str, ...] | None = None
    """The values the catalogue in hand has (`Grammar.with_values`); ranges cover only these.
    None: every value listed."""

    @property
    def ordered(self) -> bool:
        """Whether the values have an order ranges can follow (every value has a year)."""
        return bool(self.values) and all(f.year for f in self.values.values())

    def timeline(self) -> list[str]:
        """The values ranges are taken over, oldest first."""
        present = set(self.values) if self.present is None else set(self.present)
        return sorted((v for v in self.values if v in present),
                      key=lambda v: int(self.values[v].year))


@dataclass(frozen=True)
class Rendering:
    """One generated prompt with what it expresses."""

    text: str
    frame: str
    labels: tuple[tuple[str, str, str], ...] = ()


@dataclass
class Grammar:
    """The loaded grammar; see the module docstring."""

    families: dict[str, Family]
    frames: list[Frame]
    clauses: list[Frame]
    connectors: list[Frame]
    ranges: list[Frame]
    nouns: tuple[tuple[str, str], ...]
    hedges: dict[str, tuple[str, ...]]
    contexts: dict[str, tuple[str, ...]]
    description_splits: dict[str, tuple[int, ...]]
    source: str = "built-in"
    _by_key: dict[tuple[str, str, str], list[Frame]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for frame in self.frames:
            self._by_key.setdefault((frame.split, frame.polarity, frame.kind), []).append(frame)

    # ----------------------------------------------------------------------------------
    # Loading

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Grammar:
        """The grammar at `path` (default: the built-in one). Raises FileNotFoundError or
        ValueError naming the file and the entry that is wrong."""
        if path is None:
            return _builtin()
        return _parse(Path(path))

    def with_values(self, family: str, values: Sequence[str]) -> Grammar:
        """This grammar, knowing every value in `values` of `family` (a value the grammar does
        not list is named by its lower-cased spelling and has no free description), with the
        family's ranges restricted to `values`."""
        known = self.families.get(family)
        forms = dict(known.values) if known else {}
        present = tuple(str(v) for v in values)
        if known is not None and known.present == present and all(v in forms for v in present):
            return self
        for value in present:
            forms.setdefault(value, ValueForms(names=(value.lower(),)))
        families = dict(self.families)
        families[family] = Family(family, forms, known.things if known else ("{name} {nouns}",),
                                  known.eras if known else (), present)
        return Grammar(families, self.frames, self.clauses, self.connectors, self.ranges,
                       self.nouns, self.hedges, self.contexts, self.description_splits,
                       self.source)

    # ----------------------------------------------------------------------------------
    # Queries

    def frames_of(self, split: str, polarity: str, kind: str = "frame",
                  family: str | None = None) -> list[Frame]:
        """Frames of one split, polarity ("asked", "refused", "neutral") and kind; with
        `family`, only those that suit its values."""
        _check_split(split)
        frames = self._by_key.get((split, polarity, kind), [])
        return [f for f in frames if family is None or f.suits(family)]

    def connectors_of(self, split: str) -> list[Frame]:
        _check_split(split)
        return [c for c in self.connectors if c.split == split]

    def clauses_of(self, split: str, polarity: str, family: str | None = None) -> list[Frame]:
        _check_split(split)
        return [c for c in self.clauses if c.split == split and c.polarity == polarity
                and (family is None or c.suits(family))]

    def ranges_of(self, family: str, split: str, polarity: str) -> list[tuple[str, ...]]:
        """Every range (a set of two or more values, not all of them, oldest first) that the
        relative frames and eras of `split` can ask for (`polarity` "asked") or refuse
        ("refused") in `family`; empty for a family without an order."""
        _check_split(split)
        known = self.families.get(family)
        if known is None or not known.ordered:
            return []
        timeline = known.timeline()
        found: dict[tuple[str, ...], None] = {}
        for frame in self.ranges:
            if frame.split == split and frame.polarity == polarity and frame.suits(family):
                for boundary in timeline:
                    found.setdefault(_relative(timeline, frame.relation, boundary), None)
        for era in known.eras:
            if era.split == split:
                found.setdefault(tuple(v for v in timeline if v in era.values), None)
        return [r for r in found if 2 <= len(r) < len(timeline)]

    def frame(self, frame_id: str) -> Frame:
        """A frame or connector by id (KeyError if unknown)."""
        for frame in (*self.frames, *self.connectors, *self.ranges):
            if frame.id == frame_id:
                return frame
        raise KeyError(f"the grammar has no frame {frame_id!r}")

    def descriptions(self, family: str, value: str, split: str) -> tuple[str, ...]:
        """The free descriptions of a value that belong to `split`."""
        forms = self._forms(family, value)
        picks = self.description_splits.get(split, ())
        return tuple(forms.descriptions[i] for i in picks if i < len(forms.descriptions))

    def describable(self, family: str, value: str) -> bool:
        """Whether the value has a free description in every split."""
        return all(self.descriptions(family, value, s) for s in SPLITS)

    # ----------------------------------------------------------------------------------
    # Rendering

    def render(self, intent: Intent, rng: np.random.Generator, *, split: str = "train",
               frame: str | None = None, style: str = "name") -> Rendering:
        """One sentence for `intent` from the pieces of `split`.

        `frame` forces one frame (positive/negative/neutral) or connector (compound) id;
        `style="description"` expresses a positive or negative value by a free description.
        """
        _check_split(split)
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        if style == "description" and intent.also is not None:
            raise ValueError("a free description names one value; an intent with `also` asks "
                             "for two")
        if intent.polarity == "compound":
            return self._compound(intent, rng, split, frame)
        if intent.values:
            return self._range(intent, rng, split)
        polarity = {"positive": "asked", "negative": "refused", "neutral": "neutral"}[
            intent.polarity]
        kind = "description" if style == "description" and polarity != "neutral" else "frame"
        if frame is not None:
            chosen = self.frame(frame)
        else:
            options = self.frames_of(split, polarity, kind,
                                     None if polarity == "neutral" else intent.family)
            if not options:
                raise ValueError(f"{self.source}: no {split} {polarity} {kind} frames")
            chosen = options[int(rng.integers(len(options)))]
        values: dict[str, str] = {}
        labels: tuple[tuple[str, str, str], ...] = ()
        if polarity != "neutral":
            assert intent.value is not None
            self._fill_value(values, intent.family, intent.value, "", rng, split)
            labels = ((intent.family, intent.value, polarity), *self._also(values, intent, rng))
        text = self._finish(self._fill(chosen.text, values, rng, split), rng, split)
        return Rendering(text, chosen.id, labels)

    def _compound(self, intent: Intent, rng: np.random.Generator, split: str,
                  frame: str | None) -> Rendering:
        assert intent.value is not None and intent.avoid is not None
        if frame is not None:
            connector = self.frame(frame)
        else:
            options = self.connectors_of(split)
            if not options:
                raise ValueError(f"{self.source}: no {split} connectors")
            connector = options[int(rng.integers(len(options)))]
        values: dict[str, str] = {}
        self._fill_value(values, intent.family, intent.value, "", rng, split)
        also = self._also(values, intent, rng)
        self._fill_value(values, intent.avoid_family or intent.family, intent.avoid, "avoid_",
                         rng, split)
        parts: dict[str, str] = {}
        families = {"": intent.family, "avoid_": intent.avoid_family or intent.family}
        for slot, polarity, prefix in (("ask", "asked", ""), ("refuse", "refused", "avoid_")):
            if slot in connector.slots:
                clauses = [c for c in self.clauses_of(split, polarity, families[prefix])
                           if "description" not in c.slots or values.get(f"{prefix}description")]
                clause = clauses[int(rng.integers(len(clauses)))]
                own = {k.removeprefix(prefix): v for k, v in values.items()
                       if k.startswith(prefix) or (not prefix and not k.startswith("avoid_"))}
                parts[slot] = self._fill(clause.text, own, rng, split)
        filled = {**values, "avoid": values["avoid_value"], "avoid_thing": values["avoid_thing"],
                  **parts}
        text = self._finish(self._fill(connector.text, filled, rng, split), rng, split)
        labels = ((intent.family, intent.value, "asked"), *also,
                  (intent.avoid_family or intent.family, intent.avoid, "refused"))
        return Rendering(text, connector.id, labels)

    def _range(self, intent: Intent, rng: np.random.Generator, split: str) -> Rendering:
        """A sentence naming the whole range `intent.values`: a relative frame whose boundary
        picks exactly that set, or an era that covers it, in a generic frame."""
        polarity = "asked" if intent.polarity == "positive" else "refused"
        known = self.families.get(intent.family)
        if known is None or not known.ordered:
            raise ValueError(f"{self.source}: family {intent.family!r} has no order, so no "
                             "ranges")
        timeline = known.timeline()
        wanted = tuple(v for v in timeline if v in intent.values)
        if len(wanted) != len(set(intent.values)):
            raise ValueError(f"range {intent.values!r} has values outside {timeline}")
        relative: list[tuple[Frame, str | Era]] = [
            (frame, boundary) for frame in self.ranges
            if frame.split == split and frame.polarity == polarity and frame.suits(intent.family)
            for boundary in timeline
            if _relative(timeline, frame.relation, boundary) == wanted]
        generic = [f for f in self.frames_of(split, polarity, "frame", intent.family)
                   if not f.families]
        eras: list[tuple[Frame, str | Era]] = [
            (frame, era) for era in known.eras
            if era.split == split and tuple(v for v in timeline if v in era.values) == wanted
            for frame in generic]
        # relative frames and eras equally often where both fit (eras fill many frames)
        groups = [g for g in (relative, eras) if g]
        if not groups:
            verb = "asks for" if polarity == "asked" else "refuses"
            raise ValueError(f"{self.source}: no {split} form {verb} the range {wanted}")
        options = groups[int(rng.integers(len(groups)))]
        chosen, by = options[int(rng.integers(len(options)))]
        if isinstance(by, Era):
            name = _choice(by.names, rng)
            things = [f"{name} {{nouns}}", *by.nouns]
            values = {"value": name, "thing": self._fill(_choice(things, rng), {}, rng, split)}
        else:
            forms = self._forms(intent.family, by)
            values = {"value": _choice(forms.names, rng), "year": forms.year}
        text = self._finish(self._fill(chosen.text, values, rng, split), rng, split)
        labels = tuple((intent.family, v, polarity) for v in wanted)
        frame_id = chosen.id if not isinstance(by, Era) else f"{by.id}/{chosen.id}"
        return Rendering(text, frame_id, labels)

    def _also(self, out: dict[str, str], intent: Intent, rng: np.random.Generator
              ) -> tuple[tuple[str, str, str], ...]:
        """An intent's second asked value (`Intent.also`) named in front of the first one ("a
        90s comedy"): its label, or () without one."""
        if intent.also is None:
            return ()
        family, value = intent.also
        name = _choice(self._forms(family, value).names, rng)
        for slot in ("value", "thing"):
            out[slot] = f"{name} {out[slot]}"
        out.pop("description", None)
        return ((family, value, "asked"),)

    def _forms(self, family: str, value: str) -> ValueForms:
        if family not in self.families:
            raise KeyError(f"the grammar has no attribute family {family!r} "
                           f"(known: {sorted(self.families)})")
        forms = self.families[family].values.get(value)
        return forms if forms is not None else ValueForms(names=(value.lower(),))

    def _fill_value(self, out: dict[str, str], family: str, value: str, prefix: str,
                    rng: np.random.Generator, split: str) -> None:
        """`{prefix}value`, `{prefix}thing` and `{prefix}description` for one value."""
        forms = self._forms(family, value)
        name = _choice(forms.names, rng)
        things = [t.replace("{name}", name) for t in self.families[family].things]
        things += list(forms.nouns)
        out[f"{prefix}value"] = name
        out[f"{prefix}thing"] = self._fill(_choice(things, rng), {}, rng, split)
        descriptions = self.descriptions(family, value, split)
        if descriptions:
            out[f"{prefix}description"] = _choice(descriptions, rng)

    def _fill(self, template: str, values: dict[str, str], rng: np.random.Generator,
              split: str) -> str:
        noun, nouns = self.nouns[int(rng.integers(len(self.nouns)))]

        def one(match: re.Match[str]) -> str:
            slot, article = match.group(2), match.group(1)
            if slot == "noun":
                text = noun
            elif slot == "nouns":
                text = nouns
            elif slot == "context":
                text = _choice(self.contexts.get(split, ("",)), rng)
            elif slot in values:
                text = values[slot]
            else:
                raise ValueError(f"{self.source}: slot {{{slot}}} has no filling in {template!r}")
            if article is None:
                return text
            an = text[:1].lower() in "aeiou"
            return f"{article}{'n' if an else ''} {text}"

        return _SLOT.sub(one, template)

    def _finish(self, text: str, rng: np.random.Generator, split: str) -> str:
        """A hedge in front, a capital first letter, and some of the ways people type."""
        hedge = _choice(self.hedges.get(split, ("",)), rng)
        if hedge and not hedge.rstrip().endswith(("?", ".", "!")) and not re.match(r"I\b|I'",
                                                                                 text):
            text = text[:1].lower() + text[1:]
        text = hedge + text
        text = text[:1].upper() + text[1:]
        draw = rng.random(2)
        if draw[0] < 0.2:
            text = text.lower()
        if draw[1] < 0.2:
            text = text.rstrip(".!")
        return text


def _relative(timeline: Sequence[str], relation: str, boundary: str) -> tuple[str, ...]:
    """The values of `timeline` (oldest first) that `relation` to `boundary` picks."""
    at = list(timeline).index(boundary)
    picks = {"before": slice(0, at), "until": slice(0, at + 1), "from": slice(at, None),
             "after": slice(at + 1, None)}
    if relation not in picks:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    return tuple(timeline[picks[relation]])


def _choice(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@cache
def _builtin() -> Grammar:
    return _parse(DEFAULT_GRAMMAR)


def _parse(path: Path) -> Grammar:
    """Read and validate a grammar file."""
    where = os.fspath(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt grammar not found: {where}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{where}: not a prompt grammar (format must be {_FORMAT!r})")

    def need(obj: dict, key: str, kind: type, at: str):
        value = obj.get(key)
        if not isinstance(value, kind):
            raise ValueError(f"{where}: {at}{key} must be a {kind.__name__}")
        return value

    families = {}
    for name, spec in need(data, "families", dict, "").items():
        values = {}
        for value, forms in need(spec, "values", dict, f"families.{name}.").items():
            names = tuple(need(forms, "names", list, f"families.{name}.values.{value}."))
            if not names:
                raise ValueError(f"{where}: families.{name}.values.{value}.names is empty")
            values[value] = ValueForms(names, tuple(forms.get("nouns", ())),
                                       tuple(forms.get("descriptions", ())),
                                       str(forms.get("year", "")))
        eras = []
        for i, era in enumerate(spec.get("eras", ())):
            at = f"families.{name}.eras[{i}]."
            if era.get("split") not in SPLITS:
                raise ValueError(f"{where}: {at}split must be one of {SPLITS}")
            unknown = [v for v in need(era, "values", list, at) if v not in values]
            if unknown:
                raise ValueError(f"{where}: {at}values names unknown values {unknown}")
            names = tuple(need(era, "names", list, at))
            if not names:
                raise ValueError(f"{where}: {at}names is empty")
            eras.append(Era(str(era.get("id", f"{name}-era-{i}")), era["split"],
                            tuple(era["values"]), names, tuple(era.get("nouns", ()))))
        families[name] = Family(name, values, tuple(spec.get("things", ("{name} {nouns}",))),
                                tuple(eras))
        if eras and not families[name].ordered:
            raise ValueError(f"{where}: families.{name} has eras, so every value needs a year")

    def frames(key: str, kind: str | None) -> list[Frame]:
        out = []
        for i, entry in enumerate(need(data, key, list, "")):
            at = f"{key}[{i}]"
            split = entry.get("split")
            if split not in SPLITS:
                raise ValueError(f"{where}: {at}.split must be one of {SPLITS}")
            polarity = entry.get("polarity", "compound" if key == "connectors" else None)
            frame = Frame(id=str(entry.get("id", f"{key}-{i}")), split=split,
                          polarity=str(polarity), text=need(entry, "text", str, f"{at}."),
                          cue=str(entry.get("cue", "")),
                          kind=kind or str(entry.get("kind", "frame")),
                          families=tuple(str(f) for f in entry.get("families", ())),
                          relation=str(entry.get("relation", "")))
            _check_frame(frame, key, where, at)
            out.append(frame)
        return out

    parsed = Grammar(
        families=families, frames=frames("frames", None), clauses=frames("clauses", "clause"),
        connectors=frames("connectors", "connector"),
        ranges=frames("ranges", "range") if "ranges" in data else [],
        nouns=tuple(tuple(pair) for pair in need(data, "nouns", list, "")),
        hedges={s: tuple(v) for s, v in need(data, "hedges", dict, "").items()},
        contexts={s: tuple(v) for s, v in need(data, "contexts", dict, "").items()},
        description_splits={s: tuple(v) for s, v in data.get("description_splits", {}).items()},
        source=where)
    ids = [f.id for f in (*parsed.frames, *parsed.connectors, *parsed.ranges)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{where}: duplicate frame ids {duplicates}")
    return parsed


def _check_frame(frame: Frame, key: str, where: str, at: str) -> None:
    slots = frame.slots
    if frame.text.count("{") != frame.text.count("}"):
        raise ValueError(f"{where}: {at} {frame.text!r} has unbalanced braces")
    if key == "connectors":
        asks = bool(slots & ({"ask"} | _VALUE_SLOTS))
        refuses = bool(slots & ({"refuse"} | _AVOID_SLOTS))
        if not (asks and refuses):
            raise ValueError(f"{where}: {at} {frame.text!r} needs an asked part ({{ask}} or "
                             "{value}/{thing}) and a refused one ({refuse} or {avoid}/"
                             "{avoid_thing})")
        allowed = {"ask", "refuse"} | _VALUE_SLOTS | _AVOID_SLOTS | _ALWAYS
    elif key == "ranges":
        if frame.relation not in RELATIONS:
            raise ValueError(f"{where}: {at}.relation must be one of {RELATIONS}")
        if frame.polarity not in ("asked", "refused"):
            raise ValueError(f"{where}: {at}.polarity must be asked or refused")
        if not slots & _RANGE_SLOTS:
            raise ValueError(f"{where}: {at} {frame.text!r} names no boundary ({{value}} or "
                             "{year})")
        allowed = _RANGE_SLOTS | _ALWAYS
    elif frame.polarity == "neutral":
        allowed = set(_ALWAYS)
    elif frame.polarity in ("asked", "refused"):
        needed = ({"description"} if frame.kind == "description" else
                  _VALUE_SLOTS if frame.kind == "clause" else {"value", "thing"})
        if not slots & needed:
            raise ValueError(f"{where}: {at} {frame.text!r} names no value (needs one of "
                             f"{sorted(needed)})")
        allowed = _VALUE_SLOTS | _ALWAYS
    else:
        raise ValueError(f"{where}: {at}.polarity must be one of {FRAME_POLARITIES}")
    extra = slots - allowed
    if extra:
        raise ValueError(f"{where}: {at} {frame.text!r} has unknown slots {sorted(extra)}")
