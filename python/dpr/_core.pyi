"""Typed stubs for ``dpr._core``, the Rust extension (built from ``rust/``).

Float inputs (``items``, ``query``, ``queries``): C-contiguous, aligned, native ``float32``
arrays are used in place, without a copy. Any other real numeric array or array-like
(float16/float64, integer dtypes, nested lists, Fortran-ordered or strided views, big-endian)
is converted with ``numpy.ascontiguousarray(x, dtype=numpy.float32)`` first — so float64 is
rounded to float32, and a large non-float32 ``items`` matrix is copied on every call (convert
it once yourself). bool, complex, object and string dtypes raise ``TypeError``; a wrong number
of dimensions or mismatched dimensions raise ``ValueError``.

Ranking order (total and deterministic): higher inner product first; equal scores (``0.0`` and
``-0.0`` included) go to the lower row id; NaN scores rank after every number, ``-inf``
included. Scores are computed in float32 with a fixed summation order, so they may differ
from ``items @ query`` in the last bits.

The computation runs with the GIL released (other Python threads keep running); do not write
to the input arrays from another thread during a call.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str
INDEX_FILE: str
"""The file name of the saved HNSW graph inside a bundle (``"index.hnsw"``)."""
KERNEL_LEVEL: str
"""The dense kernels this process runs: ``"avx512"``, ``"avx2"`` or ``"portable"``: the best the
CPU has, capped by the ``DPR_KERNELS`` environment variable (read once, at import)."""

def top_k(
    items: npt.ArrayLike,
    query: npt.ArrayLike,
    k: int,
    exclude: npt.ArrayLike | Iterable[int] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Exact top-``k`` rows of ``items`` by inner product with ``query``, best first.

    Args:
        items: ``(N, d)`` item matrix.
        query: ``(d,)`` query vector.
        k: number of results wanted, ``>= 0``; larger than the number of eligible rows returns
            all of them.
        exclude: row ids never to return (e.g. padding row 0, items already seen): a 1-D
            integer array or any iterable of ints (list, set, range). Order and duplicates do
            not matter. ``None`` or empty excludes nothing.

    Returns:
        ``(ids, scores)``: ``int64`` and ``float32`` arrays of length
        ``min(k, N - len(set(exclude)))``, sorted by score, best first.

    Raises:
        ValueError: ``k < 0``; ``items`` not 2-D or ``query`` not 1-D; ``query`` length differs
            from ``d``; an ``exclude`` id outside ``0 .. N-1``; ``exclude`` not 1-D.
        TypeError: non-real dtype (bool, complex, object, str) for ``items``/``query``;
            non-integer ``exclude`` (a boolean mask: pass ``np.flatnonzero(mask)``).
    """

def top_k_batch(
    items: npt.ArrayLike,
    queries: npt.ArrayLike,
    k: int,
    exclude: Sequence[npt.ArrayLike | Iterable[int] | None] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """:func:`top_k` for every row of ``queries``, run in parallel (rayon) with the GIL released.

    Args:
        items: ``(N, d)`` item matrix.
        queries: ``(B, d)`` query matrix.
        k: number of results wanted per query, ``>= 0``.
        exclude: ``None``, or exactly one exclusion list per query (each as ``exclude`` in
            :func:`top_k`, or ``None`` for no exclusions), e.g. each user's seen items.

    Returns:
        ``(ids, scores)``: ``int64`` and ``float32`` arrays of shape ``(B, min(k, N))``; row
        ``i`` holds query ``i``'s results, best first. A row with fewer eligible items than
        that width is padded at its end with id ``-1`` and score ``-inf``; test ``ids >= 0``
        to find real results (a real score can itself be ``-inf``).

    Raises:
        ValueError: ``k < 0``; ``items``/``queries`` not 2-D; their ``d`` differ; ``exclude``
            does not hold one list per query; an ``exclude`` id outside ``0 .. N-1``.
        TypeError: as for :func:`top_k`.
    """

class BundleFormatError(ValueError):
    """A bundle file is damaged or disagrees with dpr.json (the message names file and field)."""

class Engine:
    """A loaded model bundle. :meth:`query` and :meth:`query_batch` take and return the
    dataset's item ids (the id <-> row mapping happens here only); :meth:`user_vector` and
    :meth:`user_vector_for` take internal item rows (1..N; 0 is padding), as :meth:`rows` maps.

    ``dpr.Recommender`` wraps it with hit objects and argument defaults; use that.
    Thread-safe: every method releases the GIL while it computes.
    """

    def __init__(self, path: str, verify_checksums: bool = True,
                 cache_capacity: int = 4096, index: str = "auto",
                 history_cache: int = 4096, hit: type[tuple[Any, ...]] | None = None,
                 value_graphs: bool = True) -> None:
        """Load and validate the bundle at ``path``; ``index`` is "auto", "exact" or "hnsw";
        ``history_cache`` backbone vectors are kept per history (0: none); ``hit`` is the
        tuple subclass :meth:`query` returns hits as (``dpr.Hit``; default: plain tuples);
        ``value_graphs``: whether an HNSW index has a graph per attribute value (see
        ``Recommender.load``).

        Raises:
            FileNotFoundError: the directory or a file it needs is missing.
            BundleFormatError: a file is damaged or disagrees with ``dpr.json``.
        """
    def rows(self, history: Iterable[int | str], unknown: str = "error"
             ) -> tuple[list[int], int]:
        """Internal rows of external ids and how many unknown ids were dropped.

        Raises KeyError on an unknown id (``unknown="error"``), TypeError on a non-id value.
        """
    def query(self, history: Iterable[int | str], prompt: str, k: int = 10,
              strength: float = 1.0, steer: bool = True, exclude_seen: bool = True,
              include: Sequence[tuple[str, Sequence[str]]] = (),
              exclude: Sequence[tuple[str, Sequence[str]]] = (),
              auto_exclude: bool = False, unknown: str = "error",
              ) -> list[tuple[int | str, float, str, dict[str, list[str]]]]:
        """One query, ids in and hits out: ``(id, score, title, {attribute: [values]})`` of
        the best items (at most ``k``), best first. ``history`` holds dataset item ids
        (``unknown`` as in :meth:`rows`).

        Raises ValueError when a hit's score is not finite (steering overflowed float32).
        ``steer=False`` ranks with the unsteered backbone. ``auto_exclude=True`` (mode
        "auto") also hard-excludes every value the intent head reads as refused with
        probability >= ``refuse_threshold``, on top of ``exclude``; it does nothing without a
        head, with ``steer=False``, at strength 0 or for a blank prompt.
        """
    def query_batch(self, histories: Iterable[Iterable[int | str]], prompts: Sequence[str],
                    k: int = 10, strength: float = 1.0, exclude_seen: bool = True,
                    auto_exclude: bool = False, unknown: str = "error",
                    ) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.float32]]:
        """``(ids, scores)`` of shape ``(B, min(k, N))``, best first; run in parallel.
        Each history holds dataset item ids, mapped as in :meth:`query` (``unknown`` as in
        :meth:`rows`). ``ids`` is int64 padded with -1 when the bundle's ids are all ints,
        else an object array padded with None; scores are float32 padded with -inf.
        ``auto_exclude`` as in :meth:`query`.

        Raises ValueError when a hit's score is not finite (steering overflowed float32).
        """
    def user_vector(self, rows: Sequence[int], prompt: str = "", strength: float = 1.0,
                    steer: bool = True,
                    include: Sequence[tuple[str, Sequence[str]]] = (),
                    exclude: Sequence[tuple[str, Sequence[str]]] = (),
                    auto_exclude: bool = False) -> npt.NDArray[np.float32]:
        """The steered user vector (``vector_dim`` floats) that :meth:`query` ranks by with the
        same ``steer``, filters and ``auto_exclude`` (the unsteered backbone's where the exclusions
        overrule the prompt's reading)."""
    def user_vector_for(self, rows: Sequence[int], embedding: npt.ArrayLike,
                        strength: float = 1.0) -> npt.NDArray[np.float32]:
        """The steered user vector for an explicit prompt input (``prompt_dim`` floats, as
        :meth:`encode_prompt` returns)."""
    def encode_prompt(self, prompt: str) -> npt.NDArray[np.float32]:
        """The steering head's prompt input, ``prompt_dim`` floats (cached; blank gives zeros):
        the L2-normalised sentence embedding (``prompt_dim - 2V`` floats), then, with an
        intent head of V values, ``p_asked[0..V]`` and ``p_refused[0..V]``."""
    def interpret(self, prompt: str) -> list[tuple[str, str, str, float]]:
        """``[(attribute, value, polarity, confidence)]``: the values the intent head reads as
        asked for (``polarity="asked"``) or refused (``"refused"``) with probability >=
        ``detect_threshold``, most confident first; ``[]`` for a blank prompt.

        Raises:
            ValueError: the bundle has no intent head; the tokenizer cannot encode the prompt.
        """
    def item_ids(self) -> list[int | str]:
        """External ids of rows 1..N."""
    def item_vectors(self) -> npt.NDArray[np.float32]:
        """The item vectors ``[E_i, A_i]``, ``N × (d + A)``, row i for ``item_ids()[i]``:
        a read-only view of the engine's table (no copy; it keeps the engine alive)."""
    def auto_exclusions(self, prompt: str) -> dict[str, list[str]]:
        """``{attribute: [values]}`` mode "auto" hard-excludes for ``prompt``."""
    def rows_with(self, attribute: str, values: list[str]) -> npt.NDArray[np.int64]:
        """0-based positions in ``item_ids()`` of the items having any of ``values``."""
    def history_cache_stats(self) -> tuple[int, int, int, int]:
        """``(hits, misses, size, capacity)`` of the backbone-vector cache per history."""
    def attribute_values(self) -> dict[str, list[str]]:
        """Attribute name -> its values."""
    @property
    def steered_families(self) -> list[tuple[str, list[str]]]:
        """The steered attribute families and their values, in column order."""
    def save_index(self, path: str) -> None:
        """Write the HNSW graph (built if needed) to ``path``."""
    def calibrate_index(self, queries: npt.ArrayLike, k: int,
                        target: float | None = None) -> tuple[int, float]:
        """Set the HNSW graph's default ``ef`` (built if needed) from representative user
        vectors ``(B, d + A)``: see :meth:`HnswIndex.calibrate`."""
    @property
    def uses_hnsw(self) -> bool: ...
    @property
    def num_items(self) -> int: ...
    @property
    def prompt_dim(self) -> int:
        """Width of the steering head's prompt input (embedding + 2V intent features)."""
    @property
    def intent_values(self) -> list[tuple[str, str]] | None:
        """``(attribute, value)`` of each intent output in order; None without a head."""
    @property
    def refuse_threshold(self) -> float | None:
        """dpr.json ``intent.refuse_threshold``; None without an intent head."""
    @property
    def detect_threshold(self) -> float | None:
        """dpr.json ``intent.detect_threshold``; None without an intent head."""
    @property
    def max_len(self) -> int: ...
    @property
    def strength_default(self) -> float: ...

class PromptEncoder:
    """Sentence encoder for prompts (all-MiniLM-L6-v2 by default), with an LRU cache.

    The folder holds ``config.json``, ``tokenizer.json`` and ``model.safetensors`` (floats
    stored as float16, bfloat16 or float32; computed in float32) — a bundle's
    ``prompt_encoder/``. A prompt is tokenized ([CLS] … [SEP], truncated to ``max_tokens``
    tokens), run through the encoder, mean-pooled over its tokens and L2-normalised, as
    ``dpr.encoder.PromptEncoder`` does. A blank prompt (empty after stripping whitespace) is
    the zero vector ("no steering"). Vectors are cached by the exact prompt string.

    One encoder may be shared by many threads; encoding runs with the GIL released.
    """

    def __init__(self, path: str, max_tokens: int = 256, cache_capacity: int = 4096) -> None:
        """Load the encoder from the folder ``path`` (a ``pathlib.Path`` works too).

        Args:
            path: the encoder folder.
            max_tokens: truncation length in tokens, [CLS] and [SEP] included; at most the
                model's ``max_position_embeddings`` (512 for MiniLM).
            cache_capacity: number of prompt vectors kept (least recently used evicted);
                ``0`` disables the cache.

        Raises:
            FileNotFoundError: the folder or one of the three files is missing.
            ValueError: a malformed file (bad JSON, not a BERT config, unreadable or truncated
                safetensors, a missing or mis-shaped tensor, NaN/Inf weights), or
                ``max_tokens``/``cache_capacity`` out of range.
        """

    def encode(self, prompt: str) -> npt.NDArray[np.float32]:
        """The prompt's vector: ``float32`` of shape ``(dim,)``, unit norm, or zeros if blank.

        Raises:
            ValueError: the tokenizer cannot encode the prompt.
            RuntimeError: the model run failed (a bug).
        """

    def encode_many(self, prompts: list[str]) -> npt.NDArray[np.float32]:
        """The vectors of many prompts: ``float32`` of shape ``(len(prompts), dim)``.

        Distinct uncached prompts are encoded once each, in padded batches (faster than one
        by one; rows agree with :meth:`encode` to about 1e-7).

        Raises:
            TypeError: ``prompts`` is not a list (or sequence) of ``str``.
            ValueError, RuntimeError: as for :meth:`encode`.
        """

    @property
    def dim(self) -> int:
        """Width of a prompt vector (the encoder's hidden size, 384 for MiniLM)."""

    @property
    def max_tokens(self) -> int:
        """Truncation length in tokens, [CLS] and [SEP] included."""

    @property
    def cache_len(self) -> int:
        """Number of prompt vectors currently cached."""

class HnswIndex:
    """Approximate top-k by inner product over the rows of an item matrix (dpr's HNSW graph).

    Vectors need not be normalised: the graph uses the inner-product metric, and every
    returned score is the exact float32 inner product, computed and ranked as :func:`top_k`
    does (so a score equals :func:`top_k`'s score for the same row bit for bit). The index
    keeps its own copy of the items. Searches run with the GIL released, and one index may be
    searched from many threads at once.

    Filters keep their promise: a row whose ``allowed`` flag is False is never returned, and
    ``min(k, allowed rows)`` results come back. A filter that keeps few rows (counted
    exactly from the mask) is answered by an exact scan of just the allowed rows, and so is a
    graph search that comes back short. A filter whose rows all lie in a value graph
    (:meth:`add_subgraph`) walks that smaller graph instead of the whole one.
    """

    def __init__(
        self,
        items: npt.ArrayLike,
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 128,
        skip_first_row: bool = False,
    ) -> None:
        """Build the graph over the rows of ``items`` (in parallel, GIL released).

        Args:
            items: ``(N, d)`` item matrix, ``d >= 1``, finite values.
            connectivity: ``M``, neighbours per node and layer (2..1024; hnswlib's ``M``).
            expansion_add: ``ef_construction``, candidate list length while inserting.
            expansion_search: default ``ef`` of :meth:`search` / :meth:`search_batch`.
            skip_first_row: leave row 0 (padding) out; results are still rows of ``items``.

        Raises:
            ValueError: ``items`` not 2-D or ``d == 0``; a NaN or infinity in ``items`` (the
                message names the row); a parameter out of range.
            TypeError: non-real dtype.
        """

    @staticmethod
    def load(path: str, items: npt.ArrayLike) -> HnswIndex:
        """Read an index written by :meth:`save` (a ``pathlib.Path`` works too).

        ``items`` must be the matrix the index was built from: its dimension, row count and
        sampled rows are checked against the file. The default ``ef`` is 64.

        Raises:
            OSError: missing or unreadable file, not an index (an ``index.usearch`` of an
                earlier dpr included), a damaged one (its checksum), or an index of other
                items (the message names the file).
        """

    def save(self, path: str) -> None:
        """Write the graph to ``path`` in dpr's index format (see ``docs/bundle.md``): the
        graph, its settings and sampled item vectors (to recognise the items at load), with a
        checksum. The file is written beside ``path`` and renamed into place.

        Raises:
            OSError: the file cannot be written.
        """

    def search(
        self,
        query: npt.ArrayLike,
        k: int,
        ef: int | None = None,
        allowed: npt.NDArray[np.bool_] | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The ``k`` best rows for ``query`` by inner product (approximately), best first.

        Args:
            query: ``(d,)`` vector.
            k: number of results wanted, ``>= 0``.
            ef: search breadth (``>= 1``; raised to ``k``); ``None`` uses ``expansion_search``.
                Larger is slower and more accurate.
            allowed: optional boolean mask of length ``N`` (one flag per row of ``items``,
                the skipped row 0 included); only rows flagged True are returned. The exact
                count of allowed rows picks the plan (``rust/src/index/policy.rs``): few
                allowed rows are scored exactly (the result is the exact filtered top-k),
                many are found by a graph walk that keeps only allowed rows.

        Returns:
            ``(ids, scores)``: ``int64`` row ids and ``float32`` exact inner products, of
            length ``min(k, number of indexed rows allowed)``.

        Raises:
            ValueError: ``k < 0``, ``ef < 1``, ``query`` not 1-D or of another dimension,
                ``allowed`` of the wrong length or not 1-D.
            TypeError: non-real ``query`` dtype; ``allowed`` not boolean.
        """

    def add_subgraph(self, rows: npt.ArrayLike) -> int:
        """Build a value graph: an HNSW graph, with this index's settings, over just ``rows``
        (indexed item rows in any order, repeats ignored; typically the items holding one
        attribute value). A filtered :meth:`search` whose allowed rows all lie in the smallest
        such graph, filling at least 15% of it, and are more than 5,000, walks it instead of
        the whole graph (the rules: ``rust/src/index/policy.rs``): on 1M items a filter keeping
        10% then runs faster than an unfiltered search (``benches/results/retrieval-1m.md``).
        It costs about 130 bytes a row at width 82 (its links and int8 codes; it rescores from
        the index's own copy of the items). :meth:`save` keeps value graphs and
        :meth:`calibrate` sets each one's own breadth. Safe while other threads search. The
        GIL is released while it builds.

        Returns:
            The number of value graphs the index holds.

        Raises:
            ValueError: a row outside the indexed rows (a negative one included), or no rows.
            TypeError: ``rows`` not a 1-D sequence of integers.
        """

    @property
    def subgraphs(self) -> list[list[int]]:
        """The rows of each value graph (ascending), smallest graph first."""

    def search_batch(
        self,
        queries: npt.ArrayLike,
        k: int,
        ef: int | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """:meth:`search` for every row of ``queries`` (``(B, d)``), in parallel (rayon).

        Returns:
            ``(ids, scores)`` of shape ``(B, min(k, len(self)))``, padded (never in practice
            without a filter) with id ``-1`` and score ``-inf``.

        Raises:
            ValueError, TypeError: as for :meth:`search`.
        """

    def calibrate(self, queries: npt.ArrayLike, k: int = 10,
                  target: float | None = None) -> tuple[int, float]:
        """Make :attr:`expansion_search` the smallest breadth, of 16, 24, 32, 48, 64, 96, 128,
        192, 256, 384, 512, 768 and 1024, at which :meth:`search` finds at least ``target``
        (default 0.95: ``TARGET_RECALL`` in ``rust/src/index/policy.rs``) of the exact top ``k``
        of ``queries`` (``(B, d)``, representative queries such as user vectors) on average;
        the broadest if none does. :meth:`save` keeps it.

        Returns:
            ``(ef, recall)``: the breadth chosen and the recall measured there.

        Raises:
            ValueError: no queries, a query of another width or holding a NaN or an infinity,
                ``k < 1``, or ``target`` outside ``(0, 1]``.
        """

    def __len__(self) -> int:
        """Number of indexed rows (``N``, or ``N - 1`` with ``skip_first_row``)."""

    @property
    def dim(self) -> int:
        """The items' dimension ``d``."""

    @property
    def first_row(self) -> int:
        """First indexed row: 1 with ``skip_first_row``, else 0."""

    @property
    def expansion_search(self) -> int:
        """The default ``ef``."""
