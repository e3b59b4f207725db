"""Steering over two attribute families (genre and decade): training, evaluation per family and
across families, the bundle and the served model's parity with PyTorch."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from dpr.data import synthetic_dataset
from dpr.data.dataset import ItemCatalogue
from dpr.prompts import Grammar
from dpr.train import BackboneTrainConfig
from dpr.train.pipeline import (
    evaluate_cross,
    evaluate_dpr,
    fit_backbone,
    fit_prompt_tower,
    fit_steering,
    grammar_renderer,
    steerable_families,
)
from dpr.train.steering import SteeringTrainConfig
from dpr.train.tower import TowerTrainConfig

DECADES = ("1970s", "1980s", "1990s")


@pytest.fixture(scope="module")
def two_families(tmp_path_factory):
    out = tmp_path_factory.mktemp("families")
    base = synthetic_dataset(num_users=400, num_items=150, seed=5, min_length=15,
                             max_length=40)
    rng = np.random.default_rng(0)
    decades = [(str(rng.choice(DECADES)),) if i % 10 else () for i in range(base.num_items)]
    items = ItemCatalogue(base.items.ids, base.items.titles,
                          {**base.items.attributes, "decade": decades})
    dataset = dataclasses.replace(base, items=items)
    backbone, _ = fit_backbone(dataset, "sasrec", BackboneTrainConfig(lr=3e-3, max_epochs=10),
                               out, progress=False, dim=32, max_len=40)
    families = steerable_families(dataset)
    inputs, tower = fit_prompt_tower(dataset, TowerTrainConfig(tune_layers=0, steps=300,
                                                               batch_size=32), out,
                                     families=families, progress=False)
    config = SteeringTrainConfig(epochs=6, positions_per_user=None, prompts_per_genre=12,
                                 prompts_per_pair=1, align_steps=100)
    model, _ = fit_steering(dataset, backbone, inputs, config, progress=False,
                            refuse_threshold=tower["calibration"]["refuse_threshold"],
                            families=families)
    return dataset, model, inputs, out


def test_every_described_family_is_steered_in_grammar_order(two_families):
    dataset, model, inputs, _ = two_families
    assert model.families == ["genre", "decade"]
    genres = dataset.items.attribute_values("genre")
    assert model.columns == [("genre", g) for g in genres] + [("decade", d) for d in DECADES]
    assert model.steering.attribute_dim == len(genres) + len(DECADES)
    assert inputs.intent.values == model.columns
    no_grammar = dataclasses.replace(dataset, items=ItemCatalogue(
        dataset.items.ids, dataset.items.titles, {"brand": dataset.items.attributes["genre"]}))
    with pytest.raises(ValueError, match="backbone-only"):
        steerable_families(no_grammar)


def test_decade_prompts_steer_towards_and_away_from_a_decade(two_families):
    dataset, model, inputs, _ = two_families
    results = evaluate_dpr({"dpr": (model, inputs)}, dataset, family="decade",
                           render=grammar_renderer(Grammar.load(), "train"),
                           protocols=("standard", "positive", "negative"))
    assert results["attribute"] == "decade"
    positive = results["protocols"]["positive"]["methods"]
    negative = results["protocols"]["negative"]["methods"]
    # +0.13 here (0.17 before ranges took a share of the decade episodes: in this 3-decade
    # fixture a range is two of the three decades, a weak signal for one decade)
    assert positive["dpr soft"]["genre_share@10"] > positive["backbone"]["genre_share@10"] + 0.1
    assert negative["dpr soft"]["genre_share@10"] < 0.7 * negative["backbone"]["genre_share@10"]
    assert negative["dpr auto"]["genre_share@10"] <= negative["dpr soft"]["genre_share@10"]
    standard = results["protocols"]["standard"]["methods"]
    assert standard["dpr"] == standard["backbone"]  # the empty prompt stays exact


def test_cross_family_compounds_are_measured_against_the_combined_filter(two_families):
    dataset, model, inputs, _ = two_families
    results = evaluate_cross(model, inputs, dataset,
                             render=grammar_renderer(Grammar.load(), "train"))
    block = results["protocols"]["cross-family"]
    assert block["cases"] > 50 and block["families"] == ["genre", "decade"]
    methods = block["methods"]
    combined = methods["filter"]
    assert combined["genre_share@10"] == 1.0 and combined["also_share@10"] == 1.0
    assert combined["avoid_share@10"] == 0.0
    assert methods["dpr hybrid"]["avoid_share@10"] == 0.0
    # a fixture this small (a frozen encoder, 300 read-out steps) reads the decade of a
    # three-value prompt, not yet its genre; the ML-1M figures are in benches/results
    assert methods["dpr soft"]["also_share@10"] > methods["backbone"]["also_share@10"] + 0.1
    assert methods["dpr soft"]["ndcg@10"] > methods["backbone"]["ndcg@10"]
    assert methods["dpr auto"]["avoid_share@10"] <= methods["dpr soft"]["avoid_share@10"]


def test_a_two_family_bundle_serves_what_pytorch_computes(two_families, tmp_path):
    from dpr.export import export_bundle, model_from_bundle
    from dpr.recommender import Recommender

    dataset, model, _, _ = two_families
    from dpr.catalogue import Catalogue

    bundle = export_bundle(model, Catalogue.from_items(dataset.items), tmp_path / "bundle",
                           encoder_dtype="float32")
    config = json.loads((bundle / "dpr.json").read_text())
    assert config["version"] == 4
    assert config["steer"]["families"] == [
        {"name": "genre", "values": dataset.items.attribute_values("genre")},
        {"name": "decade", "values": list(DECADES)}]
    assert "attribute" not in config["steer"] and "values" not in config["steer"]
    reference, _ = model_from_bundle(bundle)
    assert reference.columns == model.columns

    rec = Recommender.load(bundle)
    assert rec.steered_families == [("genre", dataset.items.attribute_values("genre")),
                                    ("decade", list(DECADES))]
    matrix, _ = dataset.items.steered_matrix(model.families)
    expected_items = reference.item_vectors(torch.from_numpy(matrix[1:])).detach().numpy()
    np.testing.assert_allclose(rec.item_vectors(), expected_items, atol=1e-6)
    split = dataset.split()
    for u in range(5):
        history = [dataset.items.ids[int(i) - 1] for i in split.train[u]]
        recent = torch.from_numpy(np.asarray(split.train[u][-40:]))
        with torch.no_grad():
            h = reference.user_vectors(recent[None], torch.tensor([len(recent)]))[0].numpy()
        plain = rec.user_vector(history, "")
        # no prompt: the backbone's vector, with zeros on every steered value's coordinate
        np.testing.assert_allclose(plain[: model.backbone.dim], h, atol=1e-4)
        assert not plain[model.backbone.dim:].any()
        for prompt in ("a 1990s comedy, but no horror", "nothing from the 80s"):
            served = rec.user_vector(history, prompt)
            assert served.shape == (model.backbone.dim + len(model.columns),)
            assert not np.allclose(served, plain)
            assert len(rec.query(history, prompt, k=10, mode="soft")) == 10
