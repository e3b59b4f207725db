"""Datasets: loaders, preprocessing, leave-one-out splits and the synthetic catalogue."""

from dpr.data.csv_format import read_csv_pair
from dpr.data.dataset import (
    PADDING,
    Interactions,
    ItemCatalogue,
    ItemMetadata,
    LeaveOneOutSplit,
    SequenceDataset,
    last_window,
)
from dpr.data.load import FORMATS, load_dataset
from dpr.data.movielens import read_movielens_1m, read_movielens_100k
from dpr.data.preprocess import build_dataset, k_core_mask
from dpr.data.synthetic import GENRES, generate_catalogue, synthetic_dataset

__all__ = [
    "FORMATS",
    "GENRES",
    "PADDING",
    "Interactions",
    "ItemCatalogue",
    "ItemMetadata",
    "LeaveOneOutSplit",
    "SequenceDataset",
    "build_dataset",
    "generate_catalogue",
    "k_core_mask",
    "last_window",
    "load_dataset",
    "read_csv_pair",
    "read_movielens_1m",
    "read_movielens_100k",
    "synthetic_dataset",
]
