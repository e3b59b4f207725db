"""A backbone-only run exports a filter-only bundle (docs/bundle.md `steer.prompts`): trained
through `dpr train --backbone-only` on a tiny S3-Rec-layout dataset, served by `Recommender`,
it refuses prompts, ranks exactly like the PyTorch backbone, and its brand/category filters
keep exactly the items that pass (AND across families, OR within one)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dpr import Recommender

pytest.importorskip("torch")

NO_PROMPT = "steers no attribute family, so it takes no prompt; use include/exclude filters"
NUM_USERS, NUM_ITEMS, BRANDS, CATEGORIES = 80, 40, 5, 6


def write_s3rec(root: Path, seed: int = 0) -> Path:
    """`Tiny.txt` and `Tiny_item2attributes.json` in the S3-Rec layout: items 101..140, each
    with a brand (attribute ids 1..5, always listed first; four items have none) and one to
    three categories (ids 11..16)."""
    rng = np.random.default_rng(seed)
    items = np.arange(101, 101 + NUM_ITEMS)
    lines = []
    for user in range(1, NUM_USERS + 1):
        length = int(rng.integers(6, 15))
        # Users drift through the catalogue, so there is an order to learn.
        start = int(rng.integers(0, NUM_ITEMS))
        steps = rng.integers(1, 4, size=length).cumsum()
        sequence = list(dict.fromkeys(int(items[(start + s) % NUM_ITEMS]) for s in steps))
        lines.append(" ".join(str(x) for x in [user, *sequence]))
    attributes = {}
    for i, item in enumerate(items):
        brand = [] if i % 10 == 9 else [1 + i % BRANDS]
        categories = sorted(set(rng.choice(np.arange(11, 11 + CATEGORIES),
                                           size=int(rng.integers(1, 4))).tolist()))
        attributes[str(item)] = brand + categories
    path = root / "Tiny.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "Tiny_item2attributes.json").write_text(json.dumps(attributes), encoding="utf-8")
    return path


@dataclass
class Run:
    data: Path
    out: Path
    dataset: object
    backbone: object
    rec: Recommender


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    from dpr.cli import main
    from dpr.data import load_dataset
    from dpr.train.backbone import BEST_CHECKPOINT, load_backbone

    root = tmp_path_factory.mktemp("s3rec")
    data = write_s3rec(root)
    out = root / "run"
    code = main(["train", "--format", "s3rec", "--data", str(data), "--out", str(out),
                 "--backbone-only", "--device", "cpu", "--k-core", "1", "--dim", "16",
                 "--max-len", "20", "--blocks", "1", "--heads", "1", "--ffn-dim", "32",
                 "--max-epochs", "3", "--batch-size", "32", "--max-minutes", "0"])
    assert code == 0
    dataset = load_dataset(data, "s3rec", k_core=1)
    return Run(data, out, dataset, load_backbone(out / BEST_CHECKPOINT),
               Recommender.load(out / "bundle"))


def backbone_scores(run: Run, history: np.ndarray) -> np.ndarray:
    """The PyTorch backbone's scores of rows 1..N after `history` (internal rows)."""
    import torch

    from dpr.train.scoring import backbone_user_vectors

    run.backbone.eval()
    with torch.no_grad():
        h = backbone_user_vectors(run.backbone, [history])[0]
        return (run.backbone.item_embedding.weight[1:] @ h).numpy()


def test_the_bundle_is_marked_filter_only(run: Run) -> None:
    config = json.loads((run.out / "bundle" / "dpr.json").read_text(encoding="utf-8"))
    steer = config["steer"]
    assert config["version"] == 4 and "intent" not in config
    assert steer["prompts"] is False and steer["families"] == [] and steer["attribute_dim"] == 0
    assert config["items"]["attributes"] == ["brand", "category"]
    assert (run.out / "bundle" / "prompt_encoder" / "model.safetensors").is_file()
    assert config["training"]["backbone"]["test"] == json.loads(
        (run.out / "metrics.json").read_text())["test"]
    assert run.rec.steered_families == [] and run.rec.refuse_threshold is None
    assert set(run.rec.attributes) == {"brand", "category"}


def test_the_exported_steering_head_moves_nothing(run: Run) -> None:
    import torch

    from dpr.export import model_from_bundle

    model, _ = model_from_bundle(run.out / "bundle")
    h = torch.randn(5, model.backbone.dim)
    prompt = torch.nn.functional.normalize(torch.randn(5, model.steering.prompt_dim), dim=1)
    assert torch.equal(model.steering(h, prompt, 3.0).steered, h)


def test_prompts_are_refused_everywhere(run: Run) -> None:
    rec, history = run.rec, run.dataset.items.external_id(1)
    for call in (lambda p: rec.query([history], p), lambda p: rec.query([history], p, mode="hard"),
                 lambda p: rec.query([history], p, include={"brand": ["brand 1"]}),
                 lambda p: rec.query_batch([[history], []], p),
                 lambda p: rec.query_batch([[history], []], ["", p]),
                 lambda p: rec.user_vector([history], p), rec.interpret, rec.encode_prompt,
                 rec.auto_exclusions):
        with pytest.raises(ValueError, match=NO_PROMPT):
            call("cheap lipstick")
    assert rec.interpret("  ") == [] and rec.auto_exclusions("") == {}
    assert not rec.encode_prompt("").any()


def test_the_empty_prompt_ranks_like_the_pytorch_backbone(run: Run) -> None:
    rec, items = run.rec, run.dataset.items
    split = run.dataset.split()
    for user in range(0, NUM_USERS, 7):
        history = split.train[user]
        ids = [items.external_id(int(r)) for r in history]
        scores = backbone_scores(run, history)
        scores[history - 1] = -np.inf
        best = np.argsort(-scores, kind="stable")[:10]
        hits = rec.query(ids, "", k=10)
        assert [h.item_id for h in hits] == [items.external_id(int(r) + 1) for r in best]
        np.testing.assert_allclose([h.score for h in hits], scores[best], rtol=1e-4, atol=1e-4)
        vector = rec.user_vector(ids, "   ")
        np.testing.assert_allclose(rec.item_vectors() @ vector, backbone_scores(run, history),
                                   rtol=1e-4, atol=1e-4)
    batch_ids, _ = rec.query_batch([[items.external_id(int(r)) for r in split.train[0]]], "",
                                   k=10)
    assert batch_ids[0].tolist() == [h.item_id for h in rec.query(
        [items.external_id(int(r)) for r in split.train[0]], k=10)]


def test_brand_and_category_filters_keep_exactly_the_passing_items(run: Run) -> None:
    rec, items = run.rec, run.dataset.items
    split = run.dataset.split()
    values = {f: sorted({v for vs in items.attributes[f] for v in vs}) for f in rec.attributes}
    has = {f: [set(vs) for vs in items.attributes[f]] for f in values}
    rng = np.random.default_rng(1)
    checked = short = 0
    for trial in range(300):
        user = int(rng.integers(NUM_USERS))
        history = split.train[user]
        include, exclude = {}, {}
        for family in values:
            draw = rng.random()
            chosen = list(rng.choice(values[family], size=int(rng.integers(1, 3)), replace=False))
            if draw < 0.35:
                include[family] = chosen
            elif draw < 0.7:
                exclude[family] = chosen
        passing = [row for row in range(1, items.num_items + 1)
                   if all(has[f][row - 1] & set(vs) for f, vs in include.items())
                   and not any(has[f][row - 1] & set(vs) for f, vs in exclude.items())
                   and row not in set(history.tolist())]
        k = int(rng.integers(1, 15))
        hits = rec.query([items.external_id(int(r)) for r in history], "", k=k,
                         include=include or None, exclude=exclude or None, mode="hard")
        rows = [int(r) + 1 for r in rec.item_rows([h.item_id for h in hits])]
        for hit, row in zip(hits, rows, strict=True):
            # The dataset's values of the item, and the served ones, both pass.
            for family_values in (has, {f: {row - 1: set(hit.attributes[f])} for f in values}):
                for family, chosen in exclude.items():
                    assert not family_values[family][row - 1] & set(chosen), (trial, hit)
                for family, chosen in include.items():
                    assert family_values[family][row - 1] & set(chosen), (trial, hit)
        assert len(hits) == min(k, len(passing)), (trial, include, exclude)
        assert set(rows) <= set(passing), (trial, include, exclude)
        scores = backbone_scores(run, history)
        expected = sorted(passing, key=lambda r: -scores[r - 1])[:k]
        np.testing.assert_allclose(sorted(scores[np.asarray(rows, dtype=int) - 1]),
                                   sorted(scores[np.asarray(expected, dtype=int) - 1]),
                                   rtol=1e-4, atol=1e-4)
        checked += bool(include or exclude)
        short += len(passing) < k
    assert checked > 200 and short > 10  # filters were drawn, some leaving fewer than k items


def test_fit_without_steering_returns_the_filter_only_bundle(run: Run, tmp_path: Path) -> None:
    from dpr.train import fit

    result = fit(run.dataset, run.out, backbone="sasrec", steer=False, progress=False,
                 bundle_dir=tmp_path / "bundle", dim=16, max_len=20, num_blocks=1, num_heads=1,
                 ffn_dim=32, max_epochs=3, batch_size=32, max_minutes=0, device="cpu")
    assert result.bundle == tmp_path / "bundle" and result.steering is None
    again = Recommender.load(result.bundle)
    history = [run.dataset.items.external_id(r) for r in (1, 2, 3)]
    assert ([h.item_id for h in again.query(history, k=5)]
            == [h.item_id for h in run.rec.query(history, k=5)])
    assert fit(run.dataset, run.out, backbone="sasrec", steer=False, export=False,
               progress=False, dim=16, max_len=20, num_blocks=1, num_heads=1, ffn_dim=32,
               max_epochs=3, batch_size=32, max_minutes=0, device="cpu").bundle is None


def test_export_refuses_a_model_that_would_steer(run: Run, tmp_path: Path) -> None:
    import torch

    from dpr.catalogue import Catalogue
    from dpr.export import export_bundle, filter_only_model

    model = filter_only_model(run.backbone, 384)
    with torch.no_grad():
        model.steering.experts.out_bias[0, 0] = 1.0
    with pytest.raises(ValueError, match="output is zero"):
        export_bundle(model, Catalogue.from_items(run.dataset.items), tmp_path / "b",
                      prompts=False)
    assert not (tmp_path / "b").exists()


def with_prompts(source: Path, target: Path, prompts: object) -> Path:
    """A copy of the bundle at `source` whose dpr.json says `steer.prompts = prompts`."""
    import shutil

    shutil.copytree(source, target)
    config = json.loads((target / "dpr.json").read_text(encoding="utf-8"))
    config["steer"]["prompts"] = prompts
    (target / "dpr.json").write_text(json.dumps(config), encoding="utf-8")
    return target


def test_steer_prompts_is_what_serving_obeys(run: Run, tiny_sasrec, tmp_path: Path) -> None:
    from dpr import BundleFormatError

    # The same weights marked as taking prompts: a prompt is accepted and moves nothing.
    open_bundle = Recommender.load(with_prompts(run.out / "bundle", tmp_path / "open", True))
    history = [run.dataset.items.external_id(r) for r in (4, 5)]
    assert (open_bundle.query(history, "cheap lipstick", k=8)
            == run.rec.query(history, "", k=8))
    with pytest.raises(BundleFormatError, match=r"steer\.prompts must be true or false"):
        Recommender.load(with_prompts(run.out / "bundle", tmp_path / "bad", "no"))
    # A steering bundle cannot be marked as taking no prompt.
    with pytest.raises(BundleFormatError, match=r"steer\.prompts is false but the bundle steers"):
        Recommender.load(with_prompts(tiny_sasrec.path, tmp_path / "tiny", False))
