"""Model sync: lock → plan → fetch → verify → place.

See ``docs/ARCHITECTURE.md`` for the interface and README.md ("Models") for users.
"""

from comfy_worker.sync.paths import (
    ModelPaths,
    extra_model_paths_location,
    model_roots,
    prepare_model_paths,
    write_extra_model_paths,
)
from comfy_worker.sync.run import FileResult, SyncReport, sync_models
from comfy_worker.sync.store import Claim, ModelStore, StoreStatus

__all__ = [
    "Claim",
    "FileResult",
    "ModelPaths",
    "ModelStore",
    "StoreStatus",
    "SyncReport",
    "extra_model_paths_location",
    "model_roots",
    "prepare_model_paths",
    "sync_models",
    "write_extra_model_paths",
]
