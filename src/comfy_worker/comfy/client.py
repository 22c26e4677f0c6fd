"""ComfyUI's HTTP and websocket API: thin calls, no decisions.

Transport failures (connection refused, reset, timeouts) become
:class:`~comfy_worker.errors.ComfyError` naming the request; ``/prompt`` answers are
returned as they are (:class:`PromptResponse`) for :mod:`comfy_worker.job` to judge.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import websocket

from comfy_worker.comfy.events import Event, parse_event
from comfy_worker.comfy.version import Features, reported_version
from comfy_worker.errors import ComfyError

log = logging.getLogger(__name__)

HTTP_TIMEOUT = 60.0


@dataclass(frozen=True)
class PromptResponse:
    status: int
    body: Any
    """Decoded JSON, or the response text when it is not JSON (ComfyUI answers 500 text)."""

    @property
    def prompt_id(self) -> str | None:
        if self.status == 200 and isinstance(self.body, dict):
            pid = self.body.get("prompt_id")
            return str(pid) if pid else None
        return None


PROBE_ID = "00000000-0000-4000-8000-000000000000"
"""A prompt id no prompt has: cancelling it tells whether the route exists."""


class ComfyClient:
    """One ComfyUI server at ``base_url`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, base_url: str, *, timeout: float = HTTP_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            return self._session.request(method, self.base_url + path, **kwargs)
        except requests.RequestException as exc:
            raise ComfyError(f"ComfyUI request {method} {path} failed: {exc}",
                             hint="ComfyUI is not answering; see its log") from exc

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._request(method, path, **kwargs)
        if resp.status_code != 200:
            raise ComfyError(
                f"ComfyUI request {method} {path} answered HTTP {resp.status_code}: "
                f"{resp.text[:500]}"
            )
        try:
            return resp.json()
        except ValueError as exc:
            raise ComfyError(f"ComfyUI request {method} {path} answered non-JSON: "
                             f"{resp.text[:200]!r}") from exc

    # --- reads ------------------------------------------------------------------------

    def system_stats(self) -> dict[str, Any]:
        return self._json("GET", "/system_stats")

    def features(self) -> Features:
        """The version ``/system_stats`` reports, and whether the per-prompt job routes
        exist (probed with a cancel of an id no prompt has: a no-op where they do)."""
        version = reported_version(self.system_stats())
        probe = self._request("POST", f"/api/jobs/{PROBE_ID}/cancel", json={})
        return Features(version=version, cancel_by_id=probe.status_code == 200)

    def job_status(self, prompt_id: str) -> str | None:
        """``GET /api/jobs/{id}``'s status (``pending``, ``in_progress``, ``completed``,
        ``failed``, ``cancelled``), or None for an id ComfyUI does not know."""
        resp = self._request("GET", f"/api/jobs/{prompt_id}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ComfyError(f"ComfyUI GET /api/jobs/{prompt_id} answered HTTP "
                             f"{resp.status_code}")
        status = resp.json().get("status")
        return status if isinstance(status, str) else None

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        path = "/object_info" if node_class is None else f"/object_info/{node_class}"
        return self._json("GET", path)

    def queue(self) -> dict[str, Any]:
        """``{"queue_running": [[number, prompt_id, ...]], "queue_pending": [...]}``."""
        return self._json("GET", "/queue")

    def history(self, prompt_id: str) -> dict[str, Any]:
        return self._json("GET", f"/history/{prompt_id}")

    def view(self, filename: str, subfolder: str = "", kind: str = "output") -> bytes:
        resp = self._request("GET", "/view",
                             params={"filename": filename, "subfolder": subfolder, "type": kind})
        if resp.status_code != 200:
            raise ComfyError(f"ComfyUI /view of {subfolder}/{filename} ({kind}) answered "
                             f"HTTP {resp.status_code}")
        return resp.content

    # --- writes -----------------------------------------------------------------------

    def upload_image(self, name: str, data: bytes) -> str:
        """``POST /upload/image`` into the input folder; returns the stored name."""
        resp = self._request(
            "POST", "/upload/image",
            files={"image": (name, data, "application/octet-stream")},
            data={"overwrite": "true", "type": "input"},
        )
        if resp.status_code != 200:
            raise ComfyError(f"ComfyUI /upload/image of {name!r} answered HTTP "
                             f"{resp.status_code}: {resp.text[:300]}")
        body = resp.json()
        sub = body.get("subfolder") or ""
        return f"{sub}/{body['name']}" if sub else str(body["name"])

    def queue_prompt(self, workflow: dict[str, Any], client_id: str,
                     extra_data: Mapping[str, Any] | None = None) -> PromptResponse:
        """``extra_data`` (e.g. ``api_key_comfy_org`` for partner nodes) goes beside the
        prompt, where ComfyUI's nodes read it; it may hold a secret: never logged."""
        payload: dict[str, Any] = {"prompt": workflow, "client_id": client_id}
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        resp = self._request("POST", "/prompt", data=json.dumps(payload),
                             headers={"Content-Type": "application/json"})
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text
        return PromptResponse(resp.status_code, body)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt the running prompt; with ``prompt_id``, only if that one runs."""
        self._request("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def clear_queue(self) -> None:
        self._request("POST", "/queue", json={"clear": True})

    def dequeue(self, prompt_id: str) -> None:
        """Take a pending prompt out of the queue (a no-op for one not pending)."""
        self._request("POST", "/queue", json={"delete": [prompt_id]})

    def cancel(self, prompt_id: str) -> None:
        """``POST /api/jobs/{id}/cancel``: interrupted if it runs, dequeued if it waits
        (newer ComfyUI: :attr:`Features.cancel_by_id`)."""
        resp = self._request("POST", f"/api/jobs/{prompt_id}/cancel", json={})
        if resp.status_code != 200:
            raise ComfyError(f"ComfyUI POST /api/jobs/{prompt_id}/cancel answered HTTP "
                             f"{resp.status_code}: {resp.text[:200]}")

    def delete_history(self, prompt_id: str) -> None:
        self._request("POST", "/history", json={"delete": [prompt_id]})

    # --- websocket --------------------------------------------------------------------

    def events(self, client_id: str) -> EventStream:
        return EventStream(self.base_url.replace("http", "ws", 1) + f"/ws?clientId={client_id}")


class EventStream:
    """ComfyUI's websocket as a stream of typed events."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._ws: websocket.WebSocket | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._ws.connected

    def connect(self, timeout: float = 10.0) -> None:
        self.close()
        try:
            self._ws = websocket.create_connection(self.url, timeout=timeout,
                                                   enable_multithread=False)
        except (OSError, websocket.WebSocketException) as exc:
            raise ComfyError(f"ComfyUI websocket {self.url} failed: {exc}") from exc

    def next(self, timeout: float) -> Event | None:
        """The next parsed event, or ``None`` when ``timeout`` passes first.

        Raises :class:`ComfyError` when the connection is lost.
        """
        if self._ws is None:
            raise ComfyError(f"ComfyUI websocket {self.url} is not connected")
        self._ws.settimeout(max(timeout, 0.001))
        while True:
            try:
                frame = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                return None
            except (OSError, websocket.WebSocketException) as exc:
                self.close()
                raise ComfyError(f"ComfyUI websocket closed: {exc or type(exc).__name__}") \
                    from exc
            event = parse_event(frame)
            if event is not None:
                return event

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self._ws.close(timeout=1)
            self._ws = None
