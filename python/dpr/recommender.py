"""`Recommender`: prompted recommendations from a model bundle, served by the Rust core.

Needs only numpy and the `dpr._core` extension (no torch). A `Recommender` is immutable once
loaded and safe to share between threads; every call releases the GIL while it computes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from dpr._core import INDEX_FILE, BundleFormatError, Engine

__all__ = ["BundleFormatError", "CacheStats", "Hit", "Reading", "Recommender"]

Mode = Literal["auto", "soft", "hard", "hybrid"]
_MODES = ("auto", "soft", "hard", "hybrid")
Filters = Mapping[str, str | Iterable[str]]
ItemId = int | str

DEMO_BUNDLE = Path(__file__).with_name("demo_bundle")
"""The demo model `load()` opens with no argument. A build output, not kept in the repository:
`dpr build-demo` trains it (seeded, about a minute) and writes it here, and `maturin build`
packs it into the wheel (`[tool.maturin] include` in pyproject.toml)."""


# A named tuple rather than a frozen dataclass: it builds in a quarter of the time, and a query
# builds k of them on the hot path.
class Hit(NamedTuple):
    """One recommended item: its dataset id, score, title and attribute values (immutable)."""

    item_id: ItemId
    score: float
    title: str
    attributes: dict[str, list[str]]


class Reading(NamedTuple):
    """One attribute value the intent read-out finds in a prompt: e.g.
    `Reading("genre", "Horror", "refused", 0.97)`. `polarity` is "asked" or "refused";
    `confidence` is the probability of that polarity."""

    attribute: str
    value: str
    polarity: str
    confidence: float


class CacheStats(NamedTuple):
    """Counters of a cache: lookups answered from it (`hits`) and computed (`misses`), entries
    held now (`size`) and at most (`capacity`; 0: the cache is off)."""

    hits: int
    misses: int
    size: int
    capacity: int


_INT_TYPES = (int, np.integer)


def _resolve_mode(mode: Mode | None, has_filters: bool) -> Mode:
    """`mode` checked against the filters; None is "hybrid" with filters, else "auto"."""
    if mode is None:
        return "hybrid" if has_filters else "auto"
    if mode not in _MODES:
        raise ValueError(f"mode must be 'auto', 'soft', 'hard' or 'hybrid', got {mode!r}")
    if mode == "soft" and has_filters:
        raise ValueError("mode='soft' applies no filters; use mode='hybrid' or 'auto' (steer "
                         "and filter) or mode='hard' (filter only) with include/exclude")
    return mode


def _filter_pairs(filters: Filters | None, name: str) -> list[tuple[str, list[str]]]:
    """`{"genre": ["Comedy"]}` (or `{"genre": "Comedy"}`) → `[("genre", ["Comedy"])]`."""
    if filters is None:
        return []
    if not isinstance(filters, Mapping):
        raise TypeError(f"{name} must be a mapping of attribute -> values, e.g. "
                        f"{{'genre': ['Comedy']}}, got {type(filters).__name__}")
    pairs = []
    for attribute, values in filters.items():
        if isinstance(values, str):
            values = [values]
        values = list(values)
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"{name}[{attribute!r}] must hold strings, got {values!r}")
        pairs.append((str(attribute), values))
    return pairs


class Recommender:
    """A loaded bundle: `query` for one user, `query_batch` for many, `user_vector` for
    your own index, `encode_prompt` for the prompt input, `interpret` for what the bundle's
    intent read-out finds in a prompt."""

    def __init__(self, engine: Engine, path: Path) -> None:
        self._engine = engine
        self.path = path
        self._num_items = engine.num_items

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, verify: bool = True,
             prompt_cache: int = 4096, index: Literal["auto", "exact", "hnsw"] = "auto",
             history_cache: int = 4096, value_graphs: bool = True) -> Recommender:
        """Load the bundle directory at `path` (no argument: the demo bundle, if the wheel has one).

        `verify` checks every file against the sha256 sums in `dpr.json`; `prompt_cache` is how
        many prompt embeddings to keep (least recently used are dropped); `history_cache` is
        how many histories to remember (what a model reads of each: its backbone vector and
        the steering's terms in it, ~5 KB each with the default recipe), so that a new prompt
        on an unchanged history skips the backbone (0 turns it off; see
        `history_cache_stats`). `index`: "auto"
        scans all items exactly below 50,000 items and searches an HNSW graph from there on
        (read from the bundle's `index.hnsw` if saved with `save_index`, else built now; an
        `index.usearch` of an earlier dpr is not read);
        "exact" or "hnsw" force one. Selective filters are always answered exactly.
        `value_graphs`: with an HNSW graph, also one graph per attribute value held by more
        than 5,000 items and at most half of them, which `include` filters on that value walk
        (on 1M items, 1.0-1.8x the speed of an unfiltered query where the main graph ran
        0.2-0.4x: `benches/results/retrieval-1m.md`); each costs its items' links and int8
        codes (~130 bytes an item) and build time when the graph is built rather than read
        from a saved `index.hnsw`, which keeps them. False builds none and ignores saved ones.

        Raises FileNotFoundError (missing directory or file) or `BundleFormatError` (a
        `ValueError`: damaged file or a field that disagrees; the message names both).
        """
        if path is None and not (DEMO_BUNDLE / "dpr.json").is_file():
            raise FileNotFoundError(
                f"{DEMO_BUNDLE}: this install has no demo bundle (a wheel built after "
                "`dpr build-demo` has one); pass a bundle path, or run `dpr build-demo`")
        root = DEMO_BUNDLE if path is None else Path(path)
        return cls(Engine(str(root), verify, prompt_cache, index, history_cache, Hit,
                          value_graphs), root)

    def save_index(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Save the HNSW graph (built if needed) so later loads read it instead of building;
        default location: the bundle's `index.hnsw`. Returns the file written. A Recommender
        answering by the exact scan keeps doing so: the graph it builds is only saved."""
        target = self.path / INDEX_FILE if path is None else Path(path)
        self._engine.save_index(str(target))
        return target

    def calibrate_index(self, histories: Sequence[Sequence[ItemId]],
                        prompts: str | Sequence[str] = "", k: int = 10,
                        target: float | None = None) -> tuple[int, float]:
        """Make the HNSW graph's default breadth (`ef`) the smallest that finds `target`
        (default 0.95, `HnswIndex.calibrate`) of the exact top `k` on average for these users:
        a sample of real histories and prompts (one prompt for all, or one per history). The
        graph is built first if needed (and, as for `save_index`, not served by a Recommender
        answering by the exact scan); `save_index()` then keeps the breadth in the file.
        Returns the breadth and the recall measured there. The built-in default (`ef` 128) may
        fall short of 0.95 on a large catalogue (`benches/results/calibration.md`)."""
        histories = list(histories)
        if not histories:
            raise ValueError("calibrate_index needs at least one history")
        if isinstance(prompts, str):
            prompts = [prompts] * len(histories)
        prompts = list(prompts)
        if len(prompts) != len(histories):
            raise ValueError(f"{len(prompts)} prompts for {len(histories)} histories")
        queries = np.stack([self.user_vector(h, p) for h, p in zip(histories, prompts,
                                                                    strict=True)])
        ef, recall = self._engine.calibrate_index(
            queries, self._k(k), None if target is None else float(target))
        return int(ef), float(recall)

    # ------------------------------------------------------------------------------------
    # Properties

    @property
    def num_items(self) -> int:
        """Items in the catalogue."""
        return self._engine.num_items

    @property
    def attributes(self) -> dict[str, list[str]]:
        """Attribute name -> its values, as `include`/`exclude` filters accept them."""
        return self._engine.attribute_values()

    @property
    def steered_families(self) -> list[tuple[str, list[str]]]:
        """The attribute families prompts steer, each with its values, in the order of the
        steered vector's attribute coordinates (empty for a bundle that steers none)."""
        return self._engine.steered_families

    @property
    def item_ids(self) -> list[ItemId]:
        """The catalogue's item ids, in the row order of `item_vectors()`."""
        return self._engine.item_ids()

    def item_vectors(self) -> npt.NDArray[np.float32]:
        """The item table queries score against: a read-only float32 array of shape
        `(num_items, d + A)` whose row i is item `item_ids[i]`'s `[E_i, A_i]`. It views the
        loaded bundle's own memory (no copy) and keeps it alive.

        With `user_vector`, this is the hand-off to another vector engine: item scores are
        inner products `item_vectors() @ user_vector(history, prompt)` (see docs/scale-out.md).
        """
        return self._engine.item_vectors()

    def item_rows(self, item_ids: Sequence[ItemId] | npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The rows of `item_vectors()` (positions in `item_ids`) of `item_ids`; KeyError for
        an unknown id."""
        rows, _ = self._engine.rows(item_ids, "error")
        return np.asarray(rows, dtype=np.int64) - 1

    def rows_with(self, attribute: str, values: str | Iterable[str]) -> npt.NDArray[np.int64]:
        """The rows of `item_vectors()` (ascending) of the items having at least one of
        `values` of `attribute`, e.g. `rows_with("genre", ["Horror"])`: what an `exclude` or
        `include` filter names, as row ids for another engine's filter. KeyError for an
        unknown attribute or value."""
        ((name, names),) = _filter_pairs({attribute: values}, "rows_with")
        return self._engine.rows_with(name, names)

    def history_cache_stats(self) -> CacheStats:
        """Hits, misses and size of the cache of backbone vectors per history."""
        return CacheStats(*self._engine.history_cache_stats())

    @property
    def uses_hnsw(self) -> bool:
        """Whether unfiltered queries search the HNSW graph (else the exact scan)."""
        return self._engine.uses_hnsw

    @property
    def max_history(self) -> int:
        """Longest history the model reads; longer histories keep their most recent items."""
        return self._engine.max_len

    @property
    def refuse_threshold(self) -> float | None:
        """Refused probability from which `mode="auto"` hard-excludes a value (dpr.json
        `intent.refuse_threshold`, chosen by training); None for a bundle without an intent
        read-out, where "auto" steers exactly like "soft"."""
        return self._engine.refuse_threshold

    @property
    def prompt_dim(self) -> int:
        """Width of `encode_prompt`'s vector: the sentence embedding (384), plus twice the
        number of intent values for a bundle with an intent read-out."""
        return self._engine.prompt_dim

    def __repr__(self) -> str:
        return f"Recommender({str(self.path)!r}, items={self.num_items})"

    # ------------------------------------------------------------------------------------
    # Queries

    def _strength(self, strength: float | None) -> float:
        """The bundle default for None; the value rule (finite, 0 to 1e6) is the engine's."""
        if strength is None:
            return self._engine.strength_default
        if isinstance(strength, bool) or not isinstance(strength, Real):
            raise TypeError(f"strength must be a number, got {type(strength).__name__}")
        return float(strength)

    def _k(self, k: int) -> int:
        """`k` checked; anything beyond the catalogue means "every eligible item"."""
        if isinstance(k, bool) or not isinstance(k, _INT_TYPES):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return min(int(k), self._num_items)

    def query(self, history: Sequence[ItemId] | npt.ArrayLike, prompt: str = "", k: int = 10,
              strength: float | None = None, exclude_seen: bool = True,
              include: Filters | None = None, exclude: Filters | None = None,
              mode: Mode | None = None, unknown: Literal["error", "ignore"] = "error",
              ) -> list[Hit]:
        """The top-`k` items for a user with `history` (dataset item ids, oldest first),
        steered by `prompt`.

        - `strength` scales the steering (default: the bundle's, 1.0; finite, 0 to 1e6); 0 or
          a blank prompt gives exactly the backbone's ranking.
        - `include`/`exclude` are hard filters, e.g. `include={"genre": ["Comedy"]}` keeps
          items with at least one listed value per attribute; `exclude` drops items with any.
        - `mode`: "auto" steers and also hard-excludes every attribute value the bundle's
          intent read-out finds refused with probability >= `refuse_threshold` (e.g. Horror
          for "no horror please"; `include`/`exclude` add to that); "soft" steers only (no
          filters allowed); "hard" ranks with the unsteered backbone and applies the filters
          (the prompt is ignored); "hybrid" steers and applies the given filters only.
          Exclusions that cover every value the read-out finds, one of them read as asked for
          (a misread refusal), overrule the reading: the allowed items rank by the unsteered
          backbone (docs/prompts.md, "A filter overrules a contradicting reading").
          Default: "hybrid" when filters are given, else "auto". Without an intent read-out,
          "auto" is "soft" (with filters: "hybrid").
        - Items already in `history` are left out unless `exclude_seen=False`.
        - Unknown ids raise KeyError, or are dropped with `unknown="ignore"`.

        Returns up to `k` hits, best first (fewer only when fewer items pass the filters;
        a `k` beyond the catalogue returns every eligible item). Bad arguments raise
        TypeError/ValueError/KeyError as listed in docs/errors.md.
        """
        include_pairs = _filter_pairs(include, "include")
        exclude_pairs = _filter_pairs(exclude, "exclude")
        mode = _resolve_mode(mode, bool(include_pairs or exclude_pairs))
        _check_prompt(prompt)
        if not isinstance(exclude_seen, bool | np.bool_):
            raise TypeError(f"exclude_seen must be a bool, got {type(exclude_seen).__name__}")
        k = self._k(k)
        strength = self._strength(strength)
        return self._engine.query(
            history, prompt, k, strength, mode != "hard", bool(exclude_seen),
            include_pairs, exclude_pairs, mode == "auto", unknown)

    def query_batch(self, histories: Sequence[Sequence[ItemId]], prompts: str | Sequence[str] = "",
                    k: int = 10, strength: float | None = None, exclude_seen: bool = True,
                    unknown: Literal["error", "ignore"] = "error",
                    mode: Literal["auto", "soft"] = "auto",
                    ) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.float32]]:
        """`query` without filters for many users at once, in parallel across cores.

        `prompts` is one prompt per history or a single prompt for all. `mode` is "auto"
        (steer, and exclude the values each prompt refuses; see `query`) or "soft" (steer
        only). Returns
        `(item_ids, scores)` of shape `(len(histories), min(k, num_items))`, best first;
        where fewer items are eligible a row is padded with id -1 (None for string ids) and
        score -inf.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if isinstance(prompts, bytes) or not isinstance(prompts, Iterable):
            raise TypeError(f"prompts must be a str or a sequence of str, got "
                            f"{type(prompts).__name__}")
        prompts = list(prompts)
        for i, prompt in enumerate(prompts):
            _check_prompt(prompt, f"prompts[{i}]")
        if isinstance(histories, str | bytes) or not isinstance(histories, Iterable):
            raise TypeError(f"histories must be a sequence of histories, got "
                            f"{type(histories).__name__}")
        if not isinstance(exclude_seen, bool | np.bool_):
            raise TypeError(f"exclude_seen must be a bool, got {type(exclude_seen).__name__}")
        if mode not in ("auto", "soft"):
            raise ValueError(f"query_batch: mode must be 'auto' or 'soft', got {mode!r}")
        k = self._k(k)
        strength = self._strength(strength)
        return self._engine.query_batch(histories, prompts, k, strength, bool(exclude_seen),
                                        mode == "auto", unknown)

    def user_vector(self, history: Sequence[ItemId] | npt.ArrayLike, prompt: str = "",
                    strength: float | None = None,
                    unknown: Literal["error", "ignore"] = "error", *,
                    mode: Mode = "soft", include: Filters | None = None,
                    exclude: Filters | None = None) -> npt.NDArray[np.float32]:
        """The steered user vector `h'` (`d + A` floats): items score `[E_i, A_i] · h'`, i.e.
        `item_vectors() @ user_vector(...)` are the scores `query` ranks by with the same
        `mode` and filters (`mode` and `include`/`exclude` as in `query`; default "soft", the
        prompt alone). The filters themselves are the caller's to apply, plus
        `auto_exclusions(prompt)` for `mode="auto"`; see docs/scale-out.md. `strength=0` or
        `mode="hard"` gives the unsteered backbone's vector."""
        include_pairs = _filter_pairs(include, "include")
        exclude_pairs = _filter_pairs(exclude, "exclude")
        mode = _resolve_mode(mode, bool(include_pairs or exclude_pairs))
        _check_prompt(prompt)
        strength = self._strength(strength)
        rows, _ = self._engine.rows(history, unknown)
        vector = self._engine.user_vector(rows, prompt, strength, mode != "hard", include_pairs,
                                          exclude_pairs, mode == "auto")
        _check_finite(vector, strength)
        return vector

    def auto_exclusions(self, prompt: str) -> dict[str, list[str]]:
        """The attribute values `mode="auto"` hard-excludes for `prompt` (those the intent
        read-out finds refused with probability >= `refuse_threshold`), as an `exclude` filter:
        e.g. `{"genre": ["Horror"]}` for "no horror please". `{}` for a blank prompt or a
        bundle without an intent read-out."""
        _check_prompt(prompt)
        return self._engine.auto_exclusions(prompt)

    def encode_prompt(self, prompt: str) -> npt.NDArray[np.float32]:
        """What the steering head reads for `prompt`: `prompt_dim` floats, all zero for a blank
        prompt. That is the L2-normalised sentence embedding (384 floats), followed, in a bundle
        with an intent read-out of V values, by the asked and then the refused probability of
        each value (384 + 2V floats)."""
        _check_prompt(prompt)
        return self._engine.encode_prompt(prompt)

    def interpret(self, prompt: str) -> list[Reading]:
        """What the bundle's intent read-out finds in `prompt`: each attribute value asked for
        or refused with probability >= dpr.json `intent.detect_threshold` (0.5), most
        confident first; `[]` for a blank prompt. The same cached encoding `query` uses.

        Raises ValueError for a bundle without an intent read-out, and for a prompt as
        `query` does (TypeError for a non-str, ValueError for text that is not valid UTF-8).
        """
        _check_prompt(prompt)
        return [Reading(*reading) for reading in self._engine.interpret(prompt)]




def _check_prompt(prompt: object, name: str = "prompt") -> None:
    """A prompt is a str that encodes as UTF-8 (no lone surrogates, e.g. from undecodable
    bytes read with errors="surrogateescape")."""
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a str, got {type(prompt).__name__}")
    if not prompt.isascii():
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{name} is not valid text: {e.reason} at position {e.start} "
                             f"({prompt[e.start:e.end]!r}); decode bytes as UTF-8 first"
                             ) from None


def _check_finite(values: npt.NDArray[np.float32], strength: float) -> None:
    """Scores or vectors that overflowed float32 are an error, never returned."""
    if not np.isfinite(values).all():
        raise ValueError(f"the steered scores are not finite at strength={strength}; "
                         "use a smaller strength")
