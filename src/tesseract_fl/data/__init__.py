"""Datasets: IDX reader, dataset registry and loading, offline fetching, client partitions."""

from tesseract_fl.data.fetch import content_sha256, fetch_dataset, verify_dataset
from tesseract_fl.data.idx import read_idx, write_idx
from tesseract_fl.data.partition import PARTITIONS, bias_groups, partition
from tesseract_fl.data.registry import (
    DATASETS,
    Dataset,
    dataset_dir,
    default_data_dir,
    list_datasets,
    load_dataset,
)

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "Dataset",
    "bias_groups",
    "content_sha256",
    "dataset_dir",
    "default_data_dir",
    "fetch_dataset",
    "list_datasets",
    "load_dataset",
    "partition",
    "read_idx",
    "verify_dataset",
    "write_idx",
]
