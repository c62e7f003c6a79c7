"""Datasets (built-in, IDX files, arrays, image folders), procedural sprites, input checks."""

from .datasets import DATASETS, load_dataset
from .images import COLOURS, IMAGE_EXTENSIONS, load_image_folder, rows_from_dataset
from .splits import BINARIZE, DataSplits, binarize, binarize_splits, check_data, chw
from .sprites import FACTORS, SHAPES, make_sprites

__all__ = [
    "BINARIZE",
    "COLOURS",
    "DATASETS",
    "DataSplits",
    "FACTORS",
    "IMAGE_EXTENSIONS",
    "SHAPES",
    "binarize",
    "binarize_splits",
    "check_data",
    "chw",
    "load_dataset",
    "load_image_folder",
    "make_sprites",
    "rows_from_dataset",
]
