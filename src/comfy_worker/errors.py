"""Every error a user can cause, each with the field, the value and the fix.

A leaf module: it imports nothing from the package. Each class also inherits the
built-in it resembles, so ``except OSError`` / ``except ValueError`` keep working.
``str(err)`` is the message followed by ``hint: ...`` when there is a fix to name.
"""

from __future__ import annotations

from typing import Any


class WorkerError(Exception):
    """Base of all errors the worker reports to a user.

    ``reference`` is a stable, greppable code; ``hint`` says how to fix it;
    ``details`` carries structured data (e.g. per-node errors) for job responses.
    """

    reference = "worker-error"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        details: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: list[Any] = list(details or [])

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


# --- configuration and lock file ---------------------------------------------------


class ConfigError(WorkerError, ValueError):
    reference = "config-invalid"


class LockfileError(WorkerError, ValueError):
    """``models.lock.json`` is unreadable or an entry is invalid."""

    reference = "lockfile-invalid"


class SourceError(WorkerError, ValueError):
    """A ``lock add`` source string (``hf://...`` or URL) cannot be used."""

    reference = "source-invalid"


# --- model sync -----------------------------------------------------------------------


class SyncError(WorkerError, OSError):
    """Base for failures while making locked models present."""

    reference = "sync-failed"


class ModelHashMismatch(SyncError):
    reference = "model-hash-mismatch"


class ModelSizeMismatch(SyncError):
    reference = "model-size-mismatch"


class GatedModel(SyncError, PermissionError):
    """401/403 from the source: gated or private, HF_TOKEN missing or without access."""

    reference = "model-gated"


class ModelNotFound(SyncError, FileNotFoundError):
    reference = "model-not-found"


class DownloadFailed(SyncError):
    """Retries exhausted on 5xx, cut connections or timeouts."""

    reference = "download-failed"


class DiskFull(SyncError):
    reference = "disk-full"


# --- ComfyUI process ---------------------------------------------------------------


class ComfyError(WorkerError, RuntimeError):
    reference = "comfyui-error"


class ComfyStartError(ComfyError):
    """ComfyUI did not become ready (exited, timed out, bad COMFYUI_DIR)."""

    reference = "comfyui-start-failed"


class ComfyDied(ComfyError):
    """ComfyUI's process exited while the worker needed it."""

    reference = "comfyui-died"


# --- jobs ------------------------------------------------------------------------------


class JobError(WorkerError):
    """Base for a job that cannot run or failed; the worker itself stays healthy."""

    reference = "job-failed"


class JobInputInvalid(JobError, ValueError):
    """The job's ``input`` is malformed (names the field, the value and the fix)."""

    reference = "job-input-invalid"


class WorkflowInvalid(JobError, ValueError):
    """ComfyUI rejected the workflow, or preflight found missing models/nodes."""

    reference = "workflow-invalid"


class WorkflowConversionError(WorkflowInvalid):
    """A UI-format workflow (the editor's "Save") cannot be turned into an API prompt.

    The message names the node id, its type and why (unknown node type, a link to a
    missing node, a circular link, ...); ``details`` carries ``node_id``/``class_type``.
    """

    reference = "workflow-conversion-failed"


class WorkflowExecutionError(JobError):
    """A node raised while the workflow ran."""

    reference = "workflow-execution-error"


class JobTimeout(JobError, TimeoutError):
    reference = "job-timeout"


class JobCancelled(JobError):
    reference = "job-cancelled"


class OutputTooLarge(JobError):
    reference = "output-too-large"
