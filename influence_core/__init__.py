"""influence-audit's core: data, models, curvature, influence scores, unlearning, storage.

The dashboard imports only the names listed here (a test enforces it)."""

from .app_api import (
    Evidence,
    Preview,
    checkpoint_bytes,
    decision_log_path,
    decisions_frame,
    evidence,
    explain,
    ihvp_errors,
    influenced_queries,
    labels_csv,
    open_audit,
    open_index,
    preview,
    preview_indices,
    query_probabilities,
    query_vectors,
    record_many,
    review_queue,
    reviewed,
    self_influence_values,
    train_predictions,
    train_probabilities,
    undo_last,
)
from .artifacts import ArtifactError, model_hash
from .attribution.index import (
    AttributionIndex,
    index_curvature,
    index_scores,
    load_index,
    query_index,
)
from .attribution.precompute import artifact_folder, precompute
from .attribution.scores import (
    Ranked,
    pairwise_influence,
    query_gradients,
    self_influence,
    top_k,
    train_gradients,
)
from .audit.review_cache import ReviewCache, next_suspect
from .audit.session import AuditSession, AuditState, default_log_path, open_session
from .audit.store import Decision, DecisionLog
from .audit.suspects import DEFAULT_SIGNAL, suspect_scores, training_set
from .audit.unlearning import newton_step, refine, updated_model
from .config import (
    CURVATURE_CONFIGS,
    EKFACConfig,
    ExactConfig,
    IdentityConfig,
    IndexConfig,
    KFACConfig,
    LissaConfig,
    TrainConfig,
    VerifyConfig,
    artifacts_root,
    config_hash,
    default_data_root,
    recipe,
)
from .curvature import ESTIMATORS, Curvature, LissaDivergedError, fit_curvature
from .curvature.gradients import TrackedModel, UnsupportedLayerError
from .curvature.task import ClassificationTask, Task, margin
from .data.datasets import DatasetError, ImageDataset, inject_label_noise
from .data.models import MODELS, CheckpointError, build_model, load_checkpoint
from .data.registry import DATASETS, Problem, load_dataset, load_problem
from .data.training import accuracy, predict_logits, train_or_load
from .evaluation.lds import run_lds
from .evaluation.metrics import auprc, auroc, ihvp_error, lds, mislabel_curve
from .evaluation.quick import run_quick
from .evaluation.reports import load_reports
from .evaluation.unlearning import verify_unlearning
from .progress import Progress, silent, tqdm_progress
from .runtime import tune_runtime

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
