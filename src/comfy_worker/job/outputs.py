"""What a finished prompt produced, and the job's result value (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from comfy_worker.config import env_name
from comfy_worker.errors import OutputTooLarge

VIDEO_EXTENSIONS = (".gif", ".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
VIDEO_OUTPUT_KEYS = ("gifs", "videos", "video")


@dataclass(frozen=True)
class OutputFile:
    """A file an output node wrote, as ``/history`` names it."""

    node_id: str
    filename: str
    subfolder: str
    kind: str
    """ComfyUI's folder type: "output" or "temp"."""
    video: bool


@dataclass(frozen=True)
class OutputItem:
    """One delivered output: inline base64 or an S3 URL."""

    filename: str
    type: str
    """``base64`` or ``s3_url``."""
    data: str
    node_id: str

    def to_json(self) -> dict[str, Any]:
        return {"filename": self.filename, "type": self.type, "data": self.data,
                "node_id": self.node_id}


DEPRECATED_TIMINGS = {"models_wait": "models_wait_ms", "readahead": "readahead_ms"}
"""Old timing names (without their unit) still sent beside the new ones, for one release
(docs/runtime.md says so); every timing key ends in its unit."""


@dataclass(frozen=True)
class JobResult:
    """A job that ran: its images, videos and timings (milliseconds)."""

    images: tuple[OutputItem, ...] = ()
    videos: tuple[OutputItem, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)

    def with_steps_before(self, steps: Mapping[str, float]) -> JobResult:
        """This result with the timings of steps that ran before the runner (fetching
        input images, waiting for models, ...) added, ``total_ms`` included."""
        if not steps:
            return self
        timings = {**steps, **self.timings}
        timings["total_ms"] = self.timings.get("total_ms", 0.0) + sum(steps.values())
        return replace(self, timings=timings)

    def to_json(self) -> dict[str, Any]:
        timings = {k: round(v, 1) for k, v in self.timings.items()}
        for old, new in DEPRECATED_TIMINGS.items():
            if new in timings:
                timings[old] = timings[new]
        return {"images": [i.to_json() for i in self.images],
                "videos": [v.to_json() for v in self.videos],
                "timings": timings}


def collect_output_files(outputs: Mapping[str, Any]) -> list[OutputFile]:
    """Every file of every output node in ``/history``'s ``outputs`` (batches included).

    Videos: VideoHelperSuite's ``gifs``, native ``videos``/``video`` lists, ``images``
    flagged ``animated`` (SaveAnimatedWEBP/PNG, SaveVideo) and video file extensions.
    """
    files: list[OutputFile] = []
    for node_id, node_output in outputs.items():
        if not isinstance(node_output, dict):
            continue
        animated = node_output.get("animated")
        is_animated = isinstance(animated, list | tuple) and any(animated)
        for key, items in node_output.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                    continue
                name = item["filename"]
                video = (key in VIDEO_OUTPUT_KEYS or is_animated
                         or name.lower().endswith(VIDEO_EXTENSIONS))
                files.append(OutputFile(str(node_id), name, str(item.get("subfolder") or ""),
                                        str(item.get("type") or "output"), video))
    return files


def base64_size(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _size_text(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n} bytes"


def check_inline_size(sizes: Iterable[int], limit: int) -> int:
    """Total base64 size of inline outputs; :class:`OutputTooLarge` above ``limit``."""
    sizes = list(sizes)
    total = sum(base64_size(s) for s in sizes)
    if total > limit:
        raise OutputTooLarge(
            f"outputs are {_size_text(total)} as base64 ({len(sizes)} file(s)), over the "
            f"{_size_text(limit)} limit for inline results",
            hint=f"configure S3 upload ({env_name('bucket_endpoint_url')}, "
            f"{env_name('bucket_access_key_id')}, {env_name('bucket_secret_access_key')}), "
            f"raise {env_name('max_output_bytes')}, or return "
            "fewer/smaller images",
            details=[{"total_base64_bytes": total, "limit_bytes": limit,
                      "files": len(sizes)}],
        )
    return total
