"""Value graphs in the engine: a bundle large enough for them gets one per attribute value held
by more than 5,000 items and at most half of them, `include` filters on such a value are
answered from it (allowed items only, about the exact filtered top-10), and `save_index` keeps
them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dpr import Recommender, _core
from dpr.export import export_bundle
from dpr.models.dpr import DPR
from dpr.models.sasrec import SASRec
from dpr.models.steering import DPRSteering

FIXTURES = Path(__file__).parent / "fixtures"
GENRES = ["Even", "Odd", "Seventh"]
N = 12_000


def _genres(i: int) -> list[str]:
    return [GENRES[i % 2]] + (["Seventh"] if i % 7 == 0 else [])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("value_graphs")
    encoder = Path(shutil.copytree(FIXTURES / "tiny_sasrec" / "prompt_encoder", out / "encoder"))
    torch.manual_seed(0)
    backbone = SASRec(N, dim=16, max_len=8, num_blocks=1, num_heads=2, ffn_dim=24)
    steering = DPRSteering(16, attribute_dim=len(GENRES), prompt_dim=32, projector_hidden=16,
                           expert_hidden=16, router_hidden=8, attribute_scale=10.0)
    model = DPR(backbone, steering, columns=[("genre", g) for g in GENRES]).eval()
    catalogue = {"item_ids": list(range(N)), "titles": [f"Item {i}" for i in range(N)],
                 "attributes": {"genre": [_genres(i) for i in range(N)]}}
    return export_bundle(model, catalogue, out / "bundle", encoder_dir=encoder)


def _saved_graphs(rec: Recommender, path: Path) -> list[int]:
    """Sizes of the value graphs in the index file at `path` (read back by HnswIndex)."""
    table = np.vstack([np.zeros((1, rec.item_vectors().shape[1]), np.float32),
                       rec.item_vectors()])
    return [len(rows) for rows in _core.HnswIndex.load(path, table).subgraphs]


def test_include_filters_walk_the_value_graph(bundle: Path, tmp_path: Path) -> None:
    graph = Recommender.load(bundle, index="hnsw")
    exact = Recommender.load(bundle, index="exact")
    rng = np.random.default_rng(1)
    found = wanted = 0
    for _ in range(30):
        history = [int(i) for i in rng.choice(N, size=6, replace=False)]
        for value in ("Even", "Odd"):
            hits = graph.query(history, "", k=10, include={"genre": [value]})
            truth = exact.query(history, "", k=10, include={"genre": [value]})
            ids = [h.item_id for h in hits]
            assert len(ids) == 10 and not set(ids) & set(history)
            assert all(value in _genres(int(i)) for i in ids)
            found += len(set(ids) & {h.item_id for h in truth})
            wanted += 10
    assert found / wanted >= 0.95
    # Two graphs of 6,000 rows; "Seventh" (1,715 items) is scanned, not given a graph.
    path = graph.save_index(tmp_path / "index.hnsw")
    assert _saved_graphs(graph, path) == [N // 2, N // 2]
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    shutil.copy(path, copy / "index.hnsw")
    reloaded = Recommender.load(copy, index="hnsw")
    history = [5, 17, 900]
    for value in GENRES:
        assert (reloaded.query(history, "", k=10, include={"genre": [value]})
                == graph.query(history, "", k=10, include={"genre": [value]}))


def test_value_graphs_can_be_turned_off(bundle: Path, tmp_path: Path) -> None:
    """`value_graphs=False` builds none, and ignores the ones a saved index holds."""
    plain = Recommender.load(bundle, index="hnsw", value_graphs=False)
    assert _saved_graphs(plain, plain.save_index(tmp_path / "plain.hnsw")) == []
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    Recommender.load(copy, index="hnsw").save_index()
    ignoring = Recommender.load(copy, index="hnsw", value_graphs=False)
    assert _saved_graphs(ignoring, ignoring.save_index(tmp_path / "again.hnsw")) == []
    hits = ignoring.query([1, 2, 3], "", k=10, include={"genre": ["Even"]})
    assert len(hits) == 10 and all(int(h.item_id) % 2 == 0 for h in hits)
