"""Evaluation: full-ranking metrics, the most-popular baseline, model evaluation and the
steering protocols."""

from dpr.evaluate.metrics import mask_items, ranking_metrics, target_ranks
from dpr.evaluate.popularity import popularity_scores
from dpr.evaluate.protocols import (
    PROTOCOLS,
    Steerer,
    SteeringCases,
    choose_avoided_genres,
    choose_positive_genres,
    evaluate_steering,
    history_shares,
    ratios,
    top_mask,
)
from dpr.evaluate.ranking import evaluate_popularity, evaluate_scorer

__all__ = ["PROTOCOLS", "Steerer", "SteeringCases", "choose_avoided_genres",
           "choose_positive_genres", "evaluate_popularity", "evaluate_scorer",
           "evaluate_steering", "history_shares", "mask_items", "popularity_scores",
           "ranking_metrics", "ratios", "target_ranks", "top_mask"]
