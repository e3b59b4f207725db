"""Evaluation: full-ranking metrics, the most-popular baseline, and model evaluation."""

from dpr.evaluate.metrics import mask_items, ranking_metrics, target_ranks
from dpr.evaluate.popularity import popularity_scores
from dpr.evaluate.ranking import evaluate_popularity, evaluate_scorer

__all__ = ["evaluate_popularity", "evaluate_scorer", "mask_items", "popularity_scores",
           "ranking_metrics", "target_ranks"]
