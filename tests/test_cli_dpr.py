"""`dpr train` runs every stage; `dpr evaluate` reads the model back with a custom grammar."""

import json
from pathlib import Path

import numpy as np
import pytest

from dpr.bundle_schema import VERSION
from dpr.cli import main

GENRES = ["Comedy", "Horror", "Drama", "Sci-Fi"]


def _write_dataset(folder):
    rng = np.random.default_rng(0)
    folder.mkdir()
    items = ["item,title,genre"]
    for i in range(40):
        genres = sorted({GENRES[i % 4], GENRES[(i * 7) % 4]})
        items.append(f"{i},Film {i},{'|'.join(genres)}")
    rows = ["user,item,rating,timestamp"]
    for user in range(60):
        for t, item in enumerate(rng.choice(40, size=14, replace=False)):
            rows.append(f"u{user},{item},5,{t}")
    (folder / "items.csv").write_text("\n".join(items) + "\n")
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")


TINY_TOWER = ["--tower-steps", "12", "--tower-batch", "16", "--tune-layers", "1"]


def test_train_then_evaluate_with_a_custom_grammar(tmp_path, capsys):
    from dpr.prompts.grammar import DEFAULT_GRAMMAR

    data, out = tmp_path / "data", tmp_path / "model"
    _write_dataset(data)
    code = main(["train", "--data", str(data), "--format", "csv", "--backbone", "sasrec",
                 "--out", str(out), "--max-epochs", "2", "--dim", "16", "--max-len", "20",
                 "--steer-epochs", "1", "--positions-per-user", "4", *TINY_TOWER])
    assert code == 0
    assert (out / "dpr.pt").is_file() and (out / "tower.pt").is_file()
    assert (out / "prompt_encoder" / "model.safetensors").is_file()
    bundle = json.loads((out / "bundle" / "dpr.json").read_text())
    assert bundle["version"] == VERSION and 0.5 <= bundle["intent"]["refuse_threshold"] <= 0.95
    assert main(["export", str(out), "--out", str(tmp_path / "b2"), "--encoder-dtype",
                 "float32"]) == 0
    assert json.loads((tmp_path / "b2" / "dpr.json").read_text())["format"] == "dpr-bundle"
    steering = json.loads((out / "steering.json").read_text())
    assert {"train_frames", "heldout_frames", "by_frame", "flips", "interpret",
            "tower"} <= set(steering)
    assert "dpr auto" in steering["heldout_frames"]["protocols"]["negative"]["methods"]
    assert {"ref-spare-me", "and-but"} & set(steering["by_frame"]) == {"ref-spare-me"}
    assert list(out.glob("*by-frame.md")) and list(out.glob("*by-frame.png"))

    grammar = json.loads(DEFAULT_GRAMMAR.read_text())
    for frame in grammar["frames"]:
        if (frame["split"], frame["polarity"], frame.get("kind")) == ("heldout", "asked", None):
            frame["text"] = "Only {thing}, films tonight."
    path = tmp_path / "grammar.json"
    path.write_text(json.dumps(grammar))
    result_path = tmp_path / "eval" / "results.json"
    code = main(["evaluate", str(out), "--data", str(data), "--format", "csv",
                 "--json", str(result_path), "--grammar", str(path)])
    assert code == 0
    results = json.loads(result_path.read_text())
    positive = results["protocols"]["positive"]
    assert all("films tonight" in e["prompt"].lower() for e in positive["examples"])
    for method in ("backbone", "pre-filter", "post-filter", "dpr soft", "dpr hybrid",
                   "dpr auto"):
        assert set(positive["methods"][method]) >= {"ndcg@10", "recall@10", "genre_share@10"}
    assert "hard filter" in results["protocols"]["negative"]["methods"]
    assert "dpr auto neutral" in results["protocols"]["standard"]["methods"]
    assert 0.0 <= results["interpret"]["accuracy"] <= 1.0
    assert set(results["flips"]["separated"]) == {"dpr soft", "dpr auto"}
    assert list((tmp_path / "eval" / "results").glob("*by-frame.png"))

    quick = tmp_path / "eval" / "quick.json"
    assert main(["evaluate", str(out), "--data", str(data), "--format", "csv",
                 "--json", str(quick), "--no-frames"]) == 0
    results = json.loads(quick.read_text())
    assert "negative" in results["protocols"] and "by_frame" not in results


def test_evaluate_refuses_another_catalogue(tmp_path, capsys):
    data, other, out = tmp_path / "data", tmp_path / "other", tmp_path / "model"
    _write_dataset(data)
    _write_dataset(other)
    (other / "items.csv").write_text((other / "items.csv").read_text() + "99,Extra,Comedy\n")
    (other / "interactions.csv").write_text(
        (other / "interactions.csv").read_text()
        + "".join(f"x{u},99,5,{t}\n" for u in range(5) for t in range(5)))
    assert main(["train", "--data", str(data), "--format", "csv", "--out", str(out),
                 "--max-epochs", "1", "--dim", "16", "--max-len", "20", "--steer-epochs", "1",
                 "--positions-per-user", "2", "--evaluate", "none", *TINY_TOWER]) == 0
    assert not (out / "steering.json").is_file() or "heldout_frames" not in json.loads(
        (out / "steering.json").read_text())
    code = main(["evaluate", str(out), "--data", str(other), "--format", "csv",
                 "--json", str(tmp_path / "r.json")])
    assert code == 2
    assert "different item catalogue" in capsys.readouterr().err


def test_query_prints_hits_from_a_bundle(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    from dpr.export import export_bundle
    from test_recommender import _catalogue, _model

    bundle = str(export_bundle(_model("sasrec"), _catalogue(), tmp_path / "bundle"))
    assert main(["query", bundle, "--history", "1000,1007,1014", "--prompt", "something scary",
                     "-k", "4", "--exclude", "genre=Romance"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 5  # header + 4 hits
    assert all("Romance" not in row for row in rows[1:])
    assert main(["query", bundle, "--history", "1,2"]) == 2
    assert "unknown item id 1" in capsys.readouterr().err


def test_steering_flags_reach_the_training_config():
    from dpr.cli import _parser, _steering_config

    args = _parser().parse_args(["train", "--data", "d", "--format", "csv", "--out", "o",
                                 "--prompts-per-genre", "7", "--prompt-noise", "0.1",
                                 "--router-weight", "0.5"])
    config = _steering_config(args)
    assert (config.prompts_per_genre, config.prompt_noise, config.router_weight) == (7, 0.1, 0.5)
    default = _steering_config(_parser().parse_args(["train", "--data", "d", "--format", "csv",
                                                     "--out", "o"]))
    assert default.prompts_per_genre == 48


def test_backbone_flags_reach_the_model_arguments():
    from dpr.cli import _backbone_args, _parser

    base = ["train", "--data", "d", "--format", "csv", "--out", "o"]
    args = _parser().parse_args([*base, "--ffn-dim", "256", "--blocks", "3", "--max-len", "300"])
    assert _backbone_args(args) == {"dim": 64, "max_len": 300, "dropout": 0.2, "num_blocks": 3,
                                    "num_heads": 2, "ffn_dim": 256}
    assert _backbone_args(_parser().parse_args(base))["ffn_dim"] == 256  # the SASRec recipe
    gru = _parser().parse_args([*base, "--backbone", "gru4rec", "--ffn-dim", "256"])
    assert "ffn_dim" not in _backbone_args(gru)


def test_tower_flags_reach_the_tower_config():
    from dpr.cli import _parser, _tower_config

    base = ["train", "--data", "d", "--format", "csv", "--out", "o"]
    config = _tower_config(_parser().parse_args([*base, "--tune-layers", "3", "--tower-steps",
                                                 "50", "--tower-minutes", "2"]))
    assert (config.tune_layers, config.steps, config.max_minutes) == (3, 50, 2.0)
    frozen = _tower_config(_parser().parse_args([*base, "--freeze-encoder"]))
    assert frozen.tune_layers == 0
