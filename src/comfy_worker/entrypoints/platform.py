"""What a platform is: one module under ``entrypoints/`` that turns the worker into a
service of that platform, described by one :class:`Platform` value.

Each platform module has one function, ``main(settings) -> int`` (the exit status), and
its docstring says the three things that make a platform:

- how it starts: the worker's start-up (:meth:`Worker.start
  <comfy_worker.worker.Worker.start>`) before the first job (RunPod: no job is billed
  for the boot), or in the background while the platform already answers (HTTP, Vast);
- how it reads readiness: :meth:`Worker.readiness` behind ``/health`` (HTTP), the model
  log the PyWorker watches (Vast), or nothing (RunPod sends jobs only once started);
- how it serves jobs: each job body goes to :meth:`Worker.run_job` and its result or
  error is put in the platform's shape, once.

The CLI makes one command per platform (``comfy-worker runpod|serve|vast``) from
:data:`PLATFORMS`, with the shared model and ComfyUI options plus the platform's own
setting flags; ``commands/platform.py`` runs it. Platform modules are imported only when
their command runs (the RunPod SDK, uvicorn).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from comfy_worker.config import Settings


@dataclass(frozen=True)
class Flag:
    """A setting flag of the settings table (``config.SETTINGS``) a platform adds."""

    flag: str
    help: str
    metavar: str


@dataclass(frozen=True)
class Platform:
    name: str
    """Its CLI command."""
    summary: str
    """One line for ``--help``."""
    module: str
    """The module whose ``main(settings) -> int`` serves it."""
    flags: tuple[Flag, ...] = ()
    """Setting flags of its own (beside the shared model and ComfyUI ones)."""
    sdk_args: bool = False
    """The rest of the command line is the platform SDK's own (the runpod SDK reads
    ``--test_input``, ``--rp_serve_api``, ... from ``sys.argv``)."""

    def serve(self, settings: Settings) -> int:
        return int(importlib.import_module(self.module).main(settings))


PLATFORMS: tuple[Platform, ...] = (
    Platform("runpod", "serve as a RunPod serverless worker (runpod SDK flags such as "
             "--test_input pass through)", "comfy_worker.entrypoints.runpod", sdk_args=True),
    Platform("serve", "serve the local HTTP API", "comfy_worker.entrypoints.http_api",
             flags=(Flag("--host", "bind address (default 0.0.0.0)", "ADDR"),
                    Flag("--port", "port (default 8000)", "PORT"))),
    Platform("vast", "serve as a Vast.ai serverless PyWorker",
             "comfy_worker.entrypoints.vast"),
)
"""Every platform, in the order ``--help`` lists them."""


def platform_named(name: str) -> Platform | None:
    return next((p for p in PLATFORMS if p.name == name), None)
