"""Steering protocols and report, on tiny hand-built catalogues with answers computed by hand."""

import math

import numpy as np
import pytest

from dpr.data.dataset import ItemCatalogue
from dpr.evaluate import (
    SteeringCases,
    choose_avoided_genres,
    choose_positive_genres,
    evaluate_steering,
    history_shares,
    ratios,
    top_mask,
)
from dpr.evaluate.protocols import NO_GENRE, _allowed
from dpr.prompts import Intent

# Genres sort as Comedy=0, Drama=1, Horror=2. Item vectors are [x, comedy, drama, horror]:
# the plain user vector [1, 0, 0, 0] scores each item by x; the genre dims let a steerer push.
GENRES = ("Comedy", "Drama", "Horror")
ITEMS = {  # internal id: (genres, x)
    1: (("Drama",), 5.0),
    2: (("Drama", "Horror"), 4.0),
    3: (("Comedy", "Drama"), 3.0),
    4: (("Horror",), 2.0),
    5: (("Comedy",), 1.0),
    6: ((), 0.5),
    7: (("Drama",), 6.0),
    8: (("Drama",), 0.0),
    9: (("Comedy", "Horror"), 2.5),
}
K = 3


def catalogue() -> ItemCatalogue:
    ids = sorted(ITEMS)
    return ItemCatalogue([f"m{i}" for i in ids], [f"title {i}" for i in ids],
                         {"genre": [ITEMS[i][0] for i in ids]})


def item_vectors() -> np.ndarray:
    vectors = np.zeros((len(ITEMS) + 1, 1 + len(GENRES)), dtype=np.float32)
    for i, (genres, x) in ITEMS.items():
        vectors[i, 0] = x
        for g in genres:
            vectors[i, 1 + GENRES.index(g)] = 1.0
    return vectors


def make_cases(histories: list[list[int]], targets: list[int]) -> SteeringCases:
    users = np.zeros((len(targets), 1 + len(GENRES)), dtype=np.float32)
    users[:, 0] = 1.0
    return SteeringCases([np.array(h, dtype=np.int64) for h in histories], np.array(targets),
                         users, item_vectors(), catalogue())


def plain_render(intent: Intent, rng: np.random.Generator) -> str:
    """A render we control: the intent spelled out, so a steerer can read it back."""
    return f"{intent.polarity}|{intent.value or ''}|{intent.avoid or ''}"


def identity(h: np.ndarray, prompts: list[str]) -> np.ndarray:
    return h


def genre_pusher(h: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Adds a big vector towards the asked genre and away from the forbidden one."""
    out = h.copy()
    for row, prompt in enumerate(prompts):
        if not prompt:
            continue
        polarity, genre, avoid = prompt.split("|")
        if polarity in ("positive", "compound"):
            out[row, 1 + GENRES.index(genre)] += 100.0
        if polarity == "negative":
            out[row, 1 + GENRES.index(genre)] -= 100.0
        if polarity == "compound":
            out[row, 1 + GENRES.index(avoid)] -= 100.0
    return out


def run(cases: SteeringCases, steerers: dict | None = None, **kwargs) -> dict:
    kwargs.setdefault("render", plain_render)
    kwargs.setdefault("k", K)
    return evaluate_steering(cases, steerers or {}, **kwargs)


def ndcg_at(rank: int) -> float:
    return 1.0 / math.log2(rank + 2) if rank < K else 0.0


# Case 0: history 7, 8 (Drama only), target 3 (Comedy, Drama). With 7 and 8 masked the backbone
# ranks 1 (5.0), 2 (4.0), 3 (3.0): the target is 3rd.
CASE0 = ([7, 8], 3)


def test_positive_prefilter_ranks_target_first_backbone_third():
    res = run(make_cases([CASE0[0]], [CASE0[1]]), protocols=("positive",))
    block = res["protocols"]["positive"]
    assert block["examples"][0]["value"] == "Comedy"  # Drama is the history's only genre
    methods = block["methods"]
    assert methods["backbone"]["ndcg@3"] == pytest.approx(ndcg_at(2))
    assert methods["backbone"]["genre_share@3"] == pytest.approx(1 / 3)  # 1, 2, 3: only 3
    assert methods["pre-filter"]["ndcg@3"] == pytest.approx(1.0)  # Comedy: 3, 9, 5
    assert methods["pre-filter"]["genre_share@3"] == pytest.approx(1.0)
    assert methods["pre-filter"]["recall@3"] == 1.0


def test_post_filter_misses_a_target_outside_its_depth():
    cases = make_cases([CASE0[0]], [CASE0[1]])
    shallow = run(cases, protocols=("positive",), post_filter_depth=2)
    # top-2 is {1, 2}, neither a comedy: the list is empty and the target a miss
    assert shallow["protocols"]["positive"]["methods"]["post-filter"]["ndcg@3"] == 0.0
    assert shallow["protocols"]["positive"]["methods"]["post-filter"]["recall@3"] == 0.0
    deep = run(cases, protocols=("positive",), post_filter_depth=3)
    post = deep["protocols"]["positive"]["methods"]["post-filter"]
    assert post["ndcg@3"] == pytest.approx(1.0)  # {1, 2, 3} filtered to {3}
    assert post["genre_share@3"] == pytest.approx(1.0)
    assert deep["post_filter_depth"] == 3


def test_negative_forbids_most_frequent_non_target_genre_and_hard_filter_removes_it():
    res = run(make_cases([CASE0[0]], [CASE0[1]]), protocols=("negative",))
    block = res["protocols"]["negative"]
    # backbone top-3 = 1, 2, 3; the target lacks only Horror, carried by item 2
    assert block["examples"][0]["polarity"] == "negative"
    assert block["examples"][0]["value"] == "Horror"
    methods = block["methods"]
    assert methods["backbone"]["genre_share@3"] == pytest.approx(1 / 3)
    assert methods["hard filter"]["genre_share@3"] == 0.0
    assert methods["hard filter"]["ndcg@3"] == pytest.approx(ndcg_at(1))  # 1, then 3


def test_compound_avoids_genre_from_the_genre_restricted_list():
    res = run(make_cases([CASE0[0]], [CASE0[1]]), protocols=("compound",))
    block = res["protocols"]["compound"]
    # Comedy-restricted top-3 = 3, 9, 5; the target lacks Horror (item 9)
    assert block["examples"][0]["value"] == "Comedy"
    assert block["examples"][0]["avoid"] == "Horror"
    methods = block["methods"]
    assert methods["filter"]["ndcg@3"] == pytest.approx(1.0)
    assert methods["filter"]["genre_share@3"] == 1.0
    assert methods["filter"]["avoid_share@3"] == 0.0
    assert methods["backbone"]["avoid_share@3"] == pytest.approx(1 / 3)


def test_skipped_cases_are_counted():
    # case 1: target 6 has no genre -> skipped by positive and compound, kept by negative
    # case 2: history 1, 2, 7 (Drama, Horror); target 5 Comedy; Comedy-restricted top-3 = 3, 9, 5
    cases = make_cases([CASE0[0], [1], [1, 2, 7]], [CASE0[1], 6, 5])
    res = run(cases)
    assert res["protocols"]["standard"]["cases"] == 3
    assert res["protocols"]["positive"]["cases"] == 2
    assert res["protocols"]["positive"]["skipped"] == 1
    assert res["protocols"]["negative"]["skipped"] == 0
    assert res["protocols"]["compound"]["skipped"] == 1
    # case 1's forbidden genre: top-3 of 7, 2, 3 -> Drama x3, Horror, Comedy -> Drama
    assert res["protocols"]["negative"]["examples"][1]["value"] == "Drama"


def test_identity_steerer_matches_backbone_and_filters_everywhere():
    cases = make_cases([CASE0[0], [1], [1, 2, 7], [3]], [CASE0[1], 6, 5, 9])
    res = run(cases, {"dpr": identity}, post_filter_depth=3)
    p = res["protocols"]
    assert p["standard"]["methods"]["dpr"] == p["standard"]["methods"]["backbone"]
    assert p["standard"]["methods"]["dpr neutral"] == p["standard"]["methods"]["backbone"]
    pairs = {"positive": "pre-filter", "negative": "hard filter", "compound": "filter"}
    for protocol, filter_name in pairs.items():
        methods = p[protocol]["methods"]
        assert methods["dpr soft"] == methods["backbone"], protocol
        assert methods["dpr hybrid"] == methods[filter_name], protocol
    assert ratios(res, "positive", "dpr hybrid", "pre-filter", metric="ndcg@3") == 1.0


def test_genre_pusher_reaches_full_share_and_zero_forbidden_share():
    res = run(make_cases([CASE0[0]], [CASE0[1]]), {"push": genre_pusher})
    p = res["protocols"]
    assert p["positive"]["methods"]["push soft"]["genre_share@3"] == 1.0
    assert p["positive"]["methods"]["push soft"]["ndcg@3"] == pytest.approx(1.0)
    assert p["negative"]["methods"]["push soft"]["genre_share@3"] == 0.0
    # only two comedies lack Horror (3 and 5), so the third slot falls to item 1 (Drama)
    assert p["compound"]["methods"]["push soft"]["genre_share@3"] == pytest.approx(2 / 3)
    assert p["compound"]["methods"]["push soft"]["avoid_share@3"] == 0.0
    assert p["compound"]["methods"]["push soft"]["ndcg@3"] == pytest.approx(1.0)
    # the empty prompt leaves the backbone alone
    assert p["standard"]["methods"]["push"] == p["standard"]["methods"]["backbone"]


def test_history_masking():
    cases = make_cases([CASE0[0]], [CASE0[1]])
    masked = run(cases, protocols=("standard",))
    kept = run(cases, protocols=("standard",), mask_history=False)
    assert masked["history_masked"] is True and kept["history_masked"] is False
    assert masked["protocols"]["standard"]["methods"]["backbone"]["ndcg@3"] == pytest.approx(
        ndcg_at(2))
    # unmasked, item 7 (6.0) outranks the target too: 4th, a miss at k=3
    assert kept["protocols"]["standard"]["methods"]["backbone"]["ndcg@3"] == 0.0


def test_target_in_history_is_never_masked():
    res = run(make_cases([[7, 3]], [3]), protocols=("standard",))
    assert res["protocols"]["standard"]["methods"]["backbone"]["ndcg@3"] == pytest.approx(
        ndcg_at(2))  # 1, 2, 3


def test_ties_count_against_the_target():
    def flat(h: np.ndarray, prompts: list[str]) -> np.ndarray:
        return np.zeros_like(h)

    res = run(make_cases([CASE0[0]], [CASE0[1]]), {"flat": flat}, protocols=("standard",))
    assert res["protocols"]["standard"]["methods"]["flat"]["ndcg@3"] == 0.0


def test_determinism_and_same_prompts_for_every_steerer():
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def recording(name: str):
        def steer(h: np.ndarray, prompts: list[str]) -> np.ndarray:
            seen[name].extend(prompts)
            return h
        return steer

    cases = make_cases([CASE0[0], [1], [1, 2, 7], [3]], [CASE0[1], 6, 5, 9])
    first = evaluate_steering(cases, {"a": recording("a"), "b": recording("b")},
                              render=plain_render, k=K, seed=3, batch_size=2)
    assert seen["a"] == seen["b"]
    assert any(p for p in seen["a"])
    again = evaluate_steering(cases, {"a": identity, "b": identity},
                              render=plain_render, k=K, seed=3)
    assert first == again  # batch size does not change anything either
    assert all(isinstance(e["prompt"], str) and e["prompt"]
               for block in first["protocols"].values() for e in block["examples"])


def test_steerer_called_once_per_batch_per_protocol():
    calls = []

    def counting(h: np.ndarray, prompts: list[str]) -> np.ndarray:
        calls.append(len(prompts))
        return h

    cases = make_cases([CASE0[0], [1], [1, 2, 7]], [CASE0[1], 6, 5])
    run(cases, {"s": counting}, batch_size=2)
    # standard: 3 cases, 2 batches, 2 prompt kinds; positive 2 cases; negative 3; compound 2
    assert calls == [2, 2, 1, 1, 2, 2, 1, 2]


def test_bad_steerer_and_arguments_are_rejected():
    cases = make_cases([CASE0[0]], [CASE0[1]])
    with pytest.raises(ValueError, match="shape"):
        run(cases, {"bad": lambda h, p: h[:, :2]})
    with pytest.raises(ValueError, match="clashes"):
        run(cases, {"backbone": identity})
    with pytest.raises(ValueError, match="unknown protocols"):
        run(cases, protocols=("sideways",))
    with pytest.raises(ValueError, match="k must be"):
        run(cases, k=100)


def test_selection_rules_directly():
    # under-represented genre among the target's, ties by the rng
    shares = np.array([[0.2, 0.1, 0.0], [0.5, 0.5, 0.0]])
    target = np.array([[True, True, False], [True, True, False]])
    picks = {tuple(choose_positive_genres(shares, target, np.random.default_rng(s)))
             for s in range(20)}
    assert {p[0] for p in picks} == {1} and {p[1] for p in picks} == {0, 1}
    none = choose_positive_genres(shares, np.zeros_like(target), np.random.default_rng(0))
    assert none.tolist() == [-1, -1]
    # forbidden genre: most frequent in the top-k among those the target lacks; none -> -1
    counts = np.array([[3, 2, 1], [0, 0, 3], [3, 0, 0]])
    target = np.array([[True, False, False], [True, True, False], [False, True, True]])
    chosen = choose_avoided_genres(counts, target, np.random.default_rng(0))
    assert chosen.tolist() == [1, 2, 0]
    assert choose_avoided_genres(counts, np.ones_like(target), np.random.default_rng(0)
                                 ).tolist() == [-1, -1, -1]
    assert choose_avoided_genres(np.array([[5, 0, 0]]), np.array([[True, False, False]]),
                                 np.random.default_rng(0)).tolist() == [-1]


def test_history_shares_and_top_mask():
    attributes = np.array([[False, False], [True, False], [True, True], [False, True]])
    shares = history_shares([np.array([1, 2]), np.array([], dtype=np.int64)], attributes)
    assert shares.tolist() == [[1.0, 0.5], [0.0, 0.0]]
    scores = np.array([[-np.inf, 3.0, 1.0, 1.0, -np.inf], [-np.inf, 1.0, -np.inf, -np.inf, 0.0]])
    assert top_mask(scores, 2).tolist() == [[False, True, True, True, False],  # tie at the 2nd
                                            [False, True, False, False, True]]
    assert top_mask(scores, 3)[1].sum() == 2  # never a filtered-out (-inf) item


def test_ratios():
    results = {"protocols": {"positive": {"methods": {
        "a": {"ndcg@10": 0.3}, "b": {"ndcg@10": 0.2}, "z": {"ndcg@10": 0.0}}}}}
    assert ratios(results, "positive", "a", "b") == pytest.approx(1.5)
    assert math.isnan(ratios(results, "positive", "z", "z"))
    assert ratios(results, "positive", "a", "z") == math.inf
    with pytest.raises(KeyError, match="no method"):
        ratios(results, "positive", "a", "missing")


def test_report_writes_markdown_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    from dpr.evaluate.report import write_steering_report

    cases = make_cases([CASE0[0], [1], [1, 2, 7]], [CASE0[1], 6, 5])
    res = run(cases, {"dpr": genre_pusher})
    md, png = write_steering_report(res, tmp_path / "out", "Tiny test: SASRec")
    assert md.name == "tiny-test-sasrec.md" and png.name == "tiny-test-sasrec.png"
    text = md.read_text()
    assert "## positive" in text and "## compound" in text
    assert "| method | ndcg@3 | recall@3 | genre_share@3 |" in text
    assert "ndcg@3 ÷ pre-filter" in text and "ndcg@3 ÷ post-filter" in text
    assert "ndcg@3 ÷ hard filter" in text
    assert "| dpr soft |" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in md.parent.iterdir()) == [md.name, png.name]  # no temp files


def test_auto_removes_the_values_its_reading_refuses():
    def refuse_horror(prompts: list[str]) -> np.ndarray:  # reads the refusal exactly
        out = np.zeros((len(prompts), len(GENRES)), dtype=bool)
        for row, prompt in enumerate(prompts):
            polarity, value, _ = prompt.split("|")
            if polarity == "negative":
                out[row, GENRES.index(value)] = True
        return out

    cases = make_cases([[1], [7]], [5, 3])
    res = run(cases, {"s": identity}, auto={"s": refuse_horror},
              protocols=("standard", "negative"))
    negative = res["protocols"]["negative"]["methods"]
    assert negative["s auto"]["genre_share@3"] == 0.0
    assert negative["s soft"]["genre_share@3"] > 0.0
    standard = res["protocols"]["standard"]["methods"]
    assert standard["s auto neutral"] == standard["s neutral"]  # nothing refused there
    with pytest.raises(ValueError, match="unknown steerers"):
        run(cases, {"s": identity}, auto={"t": refuse_horror})


def test_evaluation_filter_is_the_served_filter(tiny, tiny_rec):
    """The evaluation's include/exclude baseline keeps exactly the items the served hard filter
    keeps. The rule has one owner (`rust/src/index/policy.rs`); this pins the evaluation's
    vectorised copy of it to the served one, for every single include / exclude / both."""
    genre = tiny.items["attributes"]["genre"]
    values, n = genre["values"], tiny.num_items
    by_value = np.zeros((len(values), n + 1), dtype=bool)
    for row, held in enumerate(genre["items"], start=1):
        by_value[held, row] = True
    choices = [NO_GENRE, *range(len(values))]
    pairs = [(i, e) for i in choices for e in choices if (i, e) != (NO_GENRE, NO_GENRE)]
    allowed = _allowed(by_value, np.array([i for i, _ in pairs]), np.array([e for _, e in pairs]))
    rows = {item_id: row for row, item_id in enumerate(tiny.ids, start=1)}
    for (include, exclude), mask in zip(pairs, allowed, strict=True):
        filters = {}
        if include != NO_GENRE:
            filters["include"] = {"genre": [values[include]]}
        if exclude != NO_GENRE:
            filters["exclude"] = {"genre": [values[exclude]]}
        hits = tiny_rec.query([], k=n, mode="hard", exclude_seen=False, **filters)
        served = {rows[hit.item_id] for hit in hits}
        assert served == set((np.flatnonzero(mask[1:]) + 1).tolist()), filters
    assert all(0 < mask[1:].sum() < n for (i, e), mask in zip(pairs, allowed, strict=True)
               if i != e), "every non-contradictory filter keeps some items and drops some"


def test_overruled_readings_rank_by_the_backbone_in_hybrid():
    def misreader(h: np.ndarray, prompts: list[str]) -> np.ndarray:
        """Reads every refusal as a request: steers into the refused genre, reordering it."""
        out = h.copy()
        for row, prompt in enumerate(prompts):
            polarity, genre, _ = prompt.split("|")
            if polarity == "negative":
                out[row, 1 + GENRES.index(genre)] += 100.0
                out[row, 0] = -1.0  # and reverses the backbone's order of the rest
        return out

    def read_value(prompts: list[str], excluded: dict[str, np.ndarray]) -> np.ndarray:
        """Settled: the one value the prompt names is among the exclusions."""
        return np.array([excluded["genre"][row, GENRES.index(p.split("|")[1])]
                         for row, p in enumerate(prompts)])

    def refuse_nothing(prompts: list[str]) -> np.ndarray:
        return np.zeros((len(prompts), len(GENRES)), dtype=bool)

    cases = make_cases([[1], [7], [3]], [5, 3, 1])
    plain = run(cases, {"s": misreader}, auto={"s": refuse_nothing}, protocols=("negative",))
    ruled = run(cases, {"s": misreader}, auto={"s": refuse_nothing}, overrules={"s": read_value},
                protocols=("negative",))
    before = plain["protocols"]["negative"]["methods"]
    after = ruled["protocols"]["negative"]["methods"]
    # The explicit exclusion covers the (misread) value: hybrid is the hard filter exactly.
    assert after["s hybrid"] == after["hard filter"]
    assert before["s hybrid"]["ndcg@3"] < before["hard filter"]["ndcg@3"]
    # Auto excluded nothing, so nothing overrules it: it stays the misread soft ranking.
    assert after["s auto"] == before["s auto"] == after["s soft"]
    with pytest.raises(ValueError, match="unknown steerers"):
        run(cases, {"s": misreader}, overrules={"t": read_value})
