"""Datasets (built-in, IDX files, arrays), procedurally generated sprites, input checks."""

from .datasets import DATASETS, load_dataset
from .splits import BINARIZE, DataSplits, binarize, binarize_splits, check_data
from .sprites import FACTORS, SHAPES, make_sprites

__all__ = [
    "BINARIZE",
    "DATASETS",
    "DataSplits",
    "FACTORS",
    "SHAPES",
    "binarize",
    "binarize_splits",
    "check_data",
    "load_dataset",
    "make_sprites",
]
