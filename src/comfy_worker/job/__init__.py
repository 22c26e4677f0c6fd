"""Jobs: job input → validated request → preflight → run on ComfyUI → result.

- :mod:`~comfy_worker.job.events`: every progress event and the one callback type.
- :mod:`~comfy_worker.job.request`: the job input (pure).
- :mod:`~comfy_worker.job.preflight`: missing models and nodes before queueing (pure).
- :mod:`~comfy_worker.job.tracker`: a prompt's events → its state (pure).
- :mod:`~comfy_worker.job.answers`: ComfyUI's rejections and node errors → errors (pure).
- :mod:`~comfy_worker.job.outputs`: output files and the :class:`JobResult` (pure).
- :mod:`~comfy_worker.job.delivery`, :mod:`~comfy_worker.job.s3`: inline or S3 outputs.
- :mod:`~comfy_worker.job.connection`: the transport (ComfyUI's HTTP API + websocket).
- :mod:`~comfy_worker.job.runner`: :class:`JobRunner`, the thin loop that drives them.
"""

from comfy_worker.job.events import JobEvent, NodeProgress, ProgressFn
from comfy_worker.job.outputs import JobResult, OutputItem
from comfy_worker.job.request import InputImage, JobRequest, parse_job_input
from comfy_worker.job.runner import JobRunner

__all__ = ["InputImage", "JobEvent", "JobRequest", "JobResult", "JobRunner", "NodeProgress",
           "OutputItem", "ProgressFn", "parse_job_input"]
