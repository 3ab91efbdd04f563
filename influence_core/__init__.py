"""influence-audit's core: data, models, curvature, influence scores, unlearning, storage.

The dashboard imports only the names listed here (a test enforces it)."""

from .attribution import Ranked, pairwise_influence, query_gradients, self_influence, top_k, train_gradients
from .config import (
    CURVATURE_CONFIGS, EKFACConfig, ExactConfig, IdentityConfig, KFACConfig, LissaConfig,
)
from .config import TrainConfig, artifacts_root, config_hash, default_data_root, recipe
from .datasets import DatasetError, ImageDataset, inject_label_noise
from .curvature import ESTIMATORS, Curvature, LissaDivergedError, fit_curvature
from .gradients import TrackedModel, UnsupportedLayerError
from .models import MODELS, CheckpointError, build_model, load_checkpoint
from .progress import Progress, silent, tqdm_progress
from .runtime import tune_runtime
from .registry import DATASETS, Problem, load_dataset, load_problem
from .task import ClassificationTask, Task, margin
from .training import accuracy, predict_logits, train_or_load
from .artifacts import ArtifactError, model_hash
from .index import (
    AttributionIndex, IndexConfig, index_curvature, index_scores, load_index, query_index,
)
from .precompute import artifact_folder, precompute
from .evaluation import auprc, auroc, ihvp_error, lds, load_reports, mislabel_curve, run_lds
from .suspects import DEFAULT_SIGNAL, suspect_scores, training_set
from .store import Decision, DecisionLog
from .unlearning import newton_step, refine, updated_model
from .audit import AuditSession, AuditState, default_log_path, open_session
from .verify import VerifyConfig, verify_unlearning
from .app_api import (
    Evidence, Preview, checkpoint_bytes, decision_log_path, decisions_frame, evidence, explain,
    influenced_queries, labels_csv, open_audit, open_index, preview, preview_indices, query_vectors, record_many,
    review_queue, reviewed, self_influence_values, query_probabilities, train_predictions,
    train_probabilities, undo_last, ihvp_errors,
)
from .review_cache import ReviewCache, next_suspect
from .cli_evaluate import run_quick

__all__ = [
    "CURVATURE_CONFIGS", "ESTIMATORS", "ClassificationTask", "Curvature", "EKFACConfig",
    "ExactConfig", "IdentityConfig", "KFACConfig", "LissaConfig", "LissaDivergedError", "Ranked",
    "Task", "TrackedModel", "UnsupportedLayerError", "fit_curvature", "margin",
    "pairwise_influence", "query_gradients", "self_influence", "top_k", "train_gradients",
    "DATASETS", "MODELS", "CheckpointError", "DatasetError", "ImageDataset", "Problem",
    "Progress", "TrainConfig", "accuracy", "artifacts_root", "build_model", "config_hash",
    "default_data_root", "inject_label_noise", "load_checkpoint", "load_dataset",
    "load_problem", "predict_logits", "recipe", "silent", "tqdm_progress", "train_or_load",
    "tune_runtime",
    "ArtifactError", "AttributionIndex", "IndexConfig", "artifact_folder", "index_curvature",
    "index_scores", "load_index", "model_hash", "precompute", "query_index",
    "DEFAULT_SIGNAL", "auprc", "auroc", "ihvp_error", "lds", "load_reports", "mislabel_curve",
    "run_lds", "suspect_scores", "training_set",
    "AuditSession", "AuditState", "Decision", "DecisionLog", "VerifyConfig", "default_log_path",
    "newton_step", "open_session", "refine", "updated_model",
    "verify_unlearning",
    "Evidence", "Preview", "checkpoint_bytes", "decision_log_path", "decisions_frame",
    "evidence", "explain", "influenced_queries", "labels_csv", "open_audit", "open_index",
    "preview", "preview_indices", "query_vectors", "record_many", "review_queue", "reviewed",
    "self_influence_values", "query_probabilities", "train_predictions", "undo_last",
    "train_probabilities", "ihvp_errors", "ReviewCache", "next_suspect", "run_quick",
]
