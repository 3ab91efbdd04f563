"""influence-audit's core: data, models, curvature, influence scores, unlearning, storage.

The dashboard imports only the names listed here (a test enforces it)."""

from .config import TrainConfig, artifacts_root, config_hash, default_data_root, recipe
from .datasets import DatasetError, ImageDataset, inject_label_noise
from .models import MODELS, CheckpointError, build_model, load_checkpoint
from .progress import Progress, silent, tqdm_progress
from .registry import DATASETS, Problem, load_dataset, load_problem
from .training import accuracy, predict_logits, train_or_load

__all__ = [
    "DATASETS", "MODELS", "CheckpointError", "DatasetError", "ImageDataset", "Problem",
    "Progress", "TrainConfig", "accuracy", "artifacts_root", "build_model", "config_hash",
    "default_data_root", "inject_label_noise", "load_checkpoint", "load_dataset",
    "load_problem", "predict_logits", "recipe", "silent", "tqdm_progress", "train_or_load",
]
