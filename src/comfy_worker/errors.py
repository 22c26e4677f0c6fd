"""Every error a user can cause, each with the field, the value and the fix.

A leaf module: it imports nothing from the package. Each class also inherits the
built-in it resembles, so ``except OSError`` / ``except ValueError`` keep working.

Each class carries its own HTTP ``status`` (as click puts ``exit_code`` on its
exceptions) and serialises itself (:meth:`WorkerError.to_json`), so the edges (RunPod,
HTTP, Vast, CLI) turn any failure into a response in one place and never look the
status up. ``str(err)`` is the message followed by ``hint: ...`` when there is a fix to
name.
"""

from __future__ import annotations

from typing import Any


class WorkerError(Exception):
    """Base of all errors the worker reports to a user.

    ``reference`` is a stable, greppable code; ``status`` the HTTP status an API answers
    with; ``hint`` says how to fix it; ``details`` carries structured data (e.g.
    per-node errors) for job responses.
    """

    reference = "worker-error"
    status = 500

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

    def to_json(self) -> dict[str, Any]:
        """The job/API error shape: ``{"error", "details", "reference"[, "hint"]}``."""
        out: dict[str, Any] = {"error": self.message, "details": list(self.details),
                               "reference": self.reference}
        if self.hint:
            out["hint"] = self.hint
        return out


class InternalError(WorkerError):
    """A bug: an exception no other class describes. The worker stays up."""

    reference = "internal-error"


def as_worker_error(exc: BaseException) -> WorkerError:
    """``exc`` itself when it is a :class:`WorkerError`, else an :class:`InternalError`
    naming it (the one place an unexpected exception becomes a user-facing error)."""
    if isinstance(exc, WorkerError):
        return exc
    return InternalError(f"internal error: {type(exc).__name__}: {exc}",
                         hint="this is a bug in comfy-worker; the worker's log has the "
                         "traceback")


# --- configuration and lock file ---------------------------------------------------


class ConfigError(WorkerError, ValueError):
    reference = "config-invalid"


class LockfileError(WorkerError, ValueError):
    """``models.lock.json`` is unreadable or an entry is invalid."""

    reference = "lockfile-invalid"


class SourceError(WorkerError, ValueError):
    """A ``lock add`` source string (``hf://...`` or URL) cannot be used."""

    reference = "source-invalid"


class DeclaredHashMismatch(SourceError):
    """The source's sha256 is not the one the workflow declares for the file."""

    reference = "declared-hash-mismatch"


# --- model sync -----------------------------------------------------------------------


class SyncError(WorkerError, OSError):
    """Base for failures while making locked models present (the source failed: 502)."""

    reference = "sync-failed"
    status = 502


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
    status = 507


class ModelCacheFull(DiskFull):
    """A model a job brings does not fit in the request cache's size cap
    (COMFY_WORKER_MODEL_CACHE_BYTES), even with every evictable file evicted."""

    reference = "model-cache-full"


class ModelSourceInvalid(SyncError, ValueError):
    """A source that cannot be followed: a redirect loop, too many redirects, a redirect
    to another scheme (``file://``), a URL requests cannot use. A locked source's is the
    operator's to fix (502); a job's own model's becomes the job's 422 (the caller's)."""

    reference = "model-source-invalid"


class ModelPathConflict(SyncError, ValueError):
    """A job's model names a path that holds other bytes for the lock or for a job
    running now."""

    reference = "model-path-conflict"
    status = 409


# --- ComfyUI process ---------------------------------------------------------------


class ComfyError(WorkerError, RuntimeError):
    reference = "comfyui-error"
    status = 503


class ComfyStartError(ComfyError):
    """ComfyUI did not become ready (exited, timed out, bad COMFYUI_DIR)."""

    reference = "comfyui-start-failed"


class ComfyVersionUnsupported(ComfyStartError):
    """The ComfyUI at COMFYUI_DIR is older than the oldest version the worker supports."""

    reference = "comfyui-version-unsupported"


class ComfyDied(ComfyError):
    """ComfyUI's process exited while the worker needed it."""

    reference = "comfyui-died"


# --- the worker's own state ---------------------------------------------------------


class WorkerStarting(WorkerError):
    """A job arrived before the worker was ready and readiness did not come in time."""

    reference = "worker-starting"
    status = 503


class WorkerStartFailed(WorkerError):
    """Start-up failed; the worker reports why to every job until it is restarted."""

    reference = "worker-start-failed"
    status = 503


class WarmupFailed(WorkerError):
    """The warm-up job (COMFY_WORKER_WARMUP) failed, so start-up failed."""

    reference = "warmup-failed"
    status = 503


# --- jobs ------------------------------------------------------------------------------


class JobError(WorkerError):
    """Base for a job that cannot run or failed; the worker itself stays healthy."""

    reference = "job-failed"


class JobInputInvalid(JobError, ValueError):
    """The job's ``input`` is malformed (names the field, the value and the fix)."""

    reference = "job-input-invalid"
    status = 422


class InputFetchFailed(JobError, ValueError):
    """An input image given by URL could not be fetched (names the image and the URL
    without its query string)."""

    reference = "input-fetch-failed"
    status = 422


class UrlNotAllowed(JobError, ValueError):
    """A URL a job gave (``images[].url``, ``models[].source.url``, or a redirect hop of
    one) is not allowed by the URL policy: not http(s), or an address that is not public
    (loopback, private, link-local, ...) and not opened by COMFY_WORKER_URL_ALLOW. Names
    the field, the URL (redacted) and the setting."""

    reference = "url-not-allowed"
    status = 422


class WorkflowInvalid(JobError, ValueError):
    """ComfyUI rejected the workflow, or preflight found missing models/nodes."""

    reference = "workflow-invalid"
    status = 422


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
    status = 504


class JobCancelled(JobError):
    reference = "job-cancelled"
    status = 503


class ModelWaitTimeout(JobError, TimeoutError):
    """A job waited longer than COMFY_WORKER_MODEL_WAIT_TIMEOUT for its models (names
    the files still missing and how far they are)."""

    reference = "model-wait-timeout"
    status = 504


class OutputTooLarge(JobError):
    reference = "output-too-large"


class OutputUploadFailed(JobError):
    """Outputs could not be stored in the configured S3 bucket."""

    reference = "output-upload-failed"
    status = 502


# --- the HTTP API ----------------------------------------------------------------------


class RequestInvalid(WorkerError, ValueError):
    """The request body is not JSON."""

    reference = "request-invalid"
    status = 400


class Unauthorized(WorkerError, PermissionError):
    """The HTTP API requires a token (COMFY_WORKER_API_TOKEN) and the request lacks it."""

    reference = "unauthorized"
    status = 401


class RequestTooLarge(WorkerError, ValueError):
    reference = "request-too-large"
    status = 413


class JobNotFound(WorkerError, LookupError):
    reference = "job-not-found"
    status = 404


class QueueFull(WorkerError):
    """More jobs are waiting than the queue holds."""

    reference = "queue-full"
    status = 429


class ShuttingDown(WorkerError):
    """The server is stopping and takes no more jobs."""

    reference = "shutting-down"
    status = 503


# --- the Comfy API v2 (/api/v2: entrypoints/api_v2) ---------------------------------------
# Each reference, with "-" read as "_", is the v2 error code the SDK types on (comfy-sdk's
# exceptions): hash-mismatch is HashMismatch, missing-asset is MissingAsset, ...


class WorkflowFormatUi(JobInputInvalid):
    """A v2 job's workflow is the editor's UI format; the v2 contract takes API format."""

    reference = "workflow-format-ui"


class MissingAsset(JobInputInvalid):
    """A ``core/ASSET`` reference in a v2 workflow names no asset this worker holds."""

    reference = "missing-asset"


class MetadataInvalid(JobInputInvalid):
    """A v2 job's ``metadata`` labels break a rule (key, value, count)."""

    reference = "metadata-invalid"


class IdempotencyKeyReuse(WorkerError, ValueError):
    """A v2 ``Idempotency-Key`` was already used: keys are single-use, never replayed."""

    reference = "idempotency-key-reuse"
    status = 422


class InvalidMetadataFilter(RequestInvalid):
    """A v2 job list's ``metadata[...]`` filter breaks a rule."""

    reference = "invalid-metadata-filter"


class InvalidCursor(RequestInvalid):
    """A v2 job list's ``cursor`` was not issued by this worker (or is malformed)."""

    reference = "invalid-cursor"


class AssetNotFound(WorkerError, LookupError):
    """No v2 asset with that id: unknown, deleted or expired."""

    reference = "asset-not-found"
    status = 404


class BlobNotFound(WorkerError, LookupError):
    """``from-hash``: this worker holds no bytes with that hash."""

    reference = "blob-not-found"
    status = 404


class OutputUnavailable(WorkerError, LookupError):
    """An asset's record exists but its bytes are gone from disk."""

    reference = "output-unavailable"
    status = 404


class HashMismatch(WorkerError, ValueError):
    """An upload's bytes do not hash to the ``expected_hash`` the client declared."""

    reference = "hash-mismatch"
    status = 409


class AssetStoreFull(WorkerError, OSError):
    """The v2 asset store (COMFY_WORKER_ASSETS_MAX_BYTES) has no room, even after
    evicting every asset no queued or running job uses."""

    reference = "asset-store-full"
    status = 507


class TooManyStreams(WorkerError):
    """More v2 event streams are open than the worker serves at once."""

    reference = "too-many-streams"
    status = 429
