"""Prompts: intents, the compositional grammar that renders them, and steering episodes.

- `Intent`: what a prompt expresses (ask for a value, refuse one, both, or nothing).
- `Grammar`: the data-driven generator (`grammar.json`); frames, clauses and connectors are
  split into train / valid / held-out so held-out figures measure unseen forms.
- `steering_episodes`: stage-3 training episodes from the training prefixes.
"""

from dpr.prompts.episodes import (
    DEFAULT_MIX,
    Episodes,
    ValueRange,
    intent_of,
    steering_episodes,
    value_ranges,
)
from dpr.prompts.grammar import SPLITS, STYLES, Frame, Grammar, Rendering
from dpr.prompts.intent import POLARITIES, Intent

__all__ = ["DEFAULT_MIX", "POLARITIES", "SPLITS", "STYLES", "Episodes", "Frame", "Grammar",
           "Intent", "Rendering", "ValueRange", "intent_of", "steering_episodes", "value_ranges"]
