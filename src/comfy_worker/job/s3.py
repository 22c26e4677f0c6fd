"""Outputs to an S3-compatible bucket, as runpod-workers/worker-comfyui does."""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING

from comfy_worker.config import env_name
from comfy_worker.errors import JobError, OutputUploadFailed

if TYPE_CHECKING:
    from comfy_worker.config import Settings


def s3_region(endpoint_url: str) -> str | None:
    """The region in an AWS-style endpoint (``https://b.s3.eu-west-1.amazonaws.com``)."""
    match = re.search(r"[/.]s3[.-]([a-z0-9-]+)\.", endpoint_url)
    return match.group(1) if match and match.group(1) != "amazonaws" else None


class S3Uploader:
    """Uploads outputs (``BUCKET_*`` settings).

    Keys are ``{job_id}/{random}-{name}``; URLs are presigned for 7 days. boto3 is
    imported here only (``pip install comfy-worker[s3]``).
    """

    def __init__(self, settings: Settings) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise JobError(f"{env_name('bucket_endpoint_url')} is set but boto3 is not installed",
                           hint="pip install 'comfy-worker[s3]'") from exc
        key_id = settings.bucket_access_key_id
        secret = settings.bucket_secret_access_key
        self.bucket = settings.bucket_name or time.strftime("%m-%y")
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.bucket_endpoint_url,
            aws_access_key_id=key_id.reveal() if key_id else None,
            aws_secret_access_key=secret.reveal() if secret else None,
            config=Config(signature_version="s3v4",
                          retries={"max_attempts": 3, "mode": "standard"}),
            region_name=s3_region(settings.bucket_endpoint_url or ""),
        )

    def upload(self, job_id: str, name: str, data: bytes) -> str:
        key = f"{job_id}/{uuid.uuid4().hex[:8]}-{name}"
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
            return str(self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=604800))
        except Exception as exc:  # botocore raises many unrelated types
            raise OutputUploadFailed(
                f"S3 upload of {name!r} to bucket {self.bucket!r} failed: {exc}",
                hint=f"check {env_name('bucket_endpoint_url')}, the bucket and the keys") from exc
