"""A seed soup of prompt towers: members that share the read-out's initial weights (torch seed
0) and differ in their training data's seed, each fine-tuned for `--minutes`; scores every
member and the uniform average of their tuned weights by the intent read-out's accuracy on the
validation and held-out frames (genre). Members train one after another here; run `train` in
several processes to train them side by side, then `score`.

    OMP_NUM_THREADS=1 python benches/tower_soup.py train --seed 1 --minutes 6 --out m1.pt
    OMP_NUM_THREADS=1 python benches/tower_soup.py train --seed 2 --minutes 6 --out m2.pt
    python benches/tower_soup.py score m1.pt m2.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dpr.encoder import encoder_dir
from dpr.evaluate.frames import interpret_report
from dpr.models.intent import IntentHead
from dpr.models.tower import PromptTower
from dpr.prompts import Grammar
from dpr.train.tower import TowerTrainConfig, train_tower

TUNE_LAYERS = 6


def new_tower(values: list[tuple[str, str]]) -> PromptTower:
    torch.manual_seed(0)
    tower = PromptTower(encoder_dir(), IntentHead(values), tune_layers=TUNE_LAYERS)
    tower.encoder.float()
    return tower


def tuned(tower: PromptTower) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in tower.named_parameters() if p.requires_grad}


def score(tower: PromptTower, grammar: Grammar, values: list[tuple[str, str]], name: str
          ) -> dict:
    tower.eval()
    row: dict = {"weights": name}
    for split in ("valid", "heldout"):
        result = interpret_report(tower.readings, grammar, values, split=split, n=3000, seed=0)
        row[split] = {k: result[k] for k in ("accuracy", "by_kind", "refused_read_as_asked",
                                            "asked_read_as_refused")}
    print(json.dumps({"weights": name, "valid": round(row["valid"]["accuracy"], 3),
                      "heldout": round(row["heldout"]["accuracy"], 3)}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train")
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--minutes", type=float, required=True)
    train.add_argument("--out", type=Path, required=True)
    scoring = sub.add_parser("score")
    scoring.add_argument("members", type=Path, nargs="+")
    scoring.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    grammar = Grammar.load()
    values = [("genre", v) for v in grammar.families["genre"].values]
    tower = new_tower(values)
    if args.command == "train":
        report = train_tower(tower, grammar, TowerTrainConfig(
            tune_layers=TUNE_LAYERS, steps=100_000, seed=args.seed, max_minutes=args.minutes),
            progress=False)
        torch.save({n: p.detach().clone() for n, p in tuned(tower).items()}, args.out)
        print(json.dumps({"seed": args.seed, "steps": report["steps"]}))
        return
    states = [torch.load(path) for path in args.members]
    params = tuned(tower)
    rows = []
    with torch.no_grad():
        for path, state in zip(args.members, states, strict=True):
            for name, p in params.items():
                p.copy_(state[name])
            rows.append(score(tower, grammar, values, path.name))
        for name, p in params.items():
            p.copy_(torch.stack([state[name] for state in states]).mean(0))
    rows.append(score(tower, grammar, values, f"soup of {len(states)}"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
