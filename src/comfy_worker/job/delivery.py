"""How a job's output files reach the client: inline base64, or an S3 bucket."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from comfy_worker.job.outputs import OutputFile, OutputItem, check_inline_size

if TYPE_CHECKING:
    from comfy_worker.config import Settings
    from comfy_worker.job.s3 import S3Uploader


class Delivery(Protocol):
    def deliver(self, job_id: str, files: Sequence[tuple[OutputFile, bytes]]
                ) -> list[OutputItem]: ...


class InlineDelivery:
    """Base64 in the result, within ``max_bytes`` (OutputTooLarge above it)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def deliver(self, job_id: str, files: Sequence[tuple[OutputFile, bytes]]
                ) -> list[OutputItem]:
        check_inline_size((len(blob) for _, blob in files), self.max_bytes)
        return [OutputItem(f.filename, "base64", base64.b64encode(blob).decode("ascii"),
                           f.node_id) for f, blob in files]


class S3Delivery:
    """Presigned S3 URLs in the result (BUCKET_* settings)."""

    def __init__(self, uploader: S3Uploader) -> None:
        self.uploader = uploader

    def deliver(self, job_id: str, files: Sequence[tuple[OutputFile, bytes]]
                ) -> list[OutputItem]:
        return [OutputItem(f.filename, "s3_url", self.uploader.upload(job_id, f.filename, blob),
                           f.node_id) for f, blob in files]


class LazyDelivery:
    """The delivery the settings ask for, made on first use (boto3 only then)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._made: Delivery | None = None

    def deliver(self, job_id: str, files: Sequence[tuple[OutputFile, bytes]]
                ) -> list[OutputItem]:
        if self._made is None:
            self._made = delivery_for(self.settings)
        return self._made.deliver(job_id, files)


def delivery_for(settings: Settings) -> Delivery:
    if settings.bucket_endpoint_url:
        from comfy_worker.job.s3 import S3Uploader

        return S3Delivery(S3Uploader(settings))
    return InlineDelivery(settings.max_output_bytes)
