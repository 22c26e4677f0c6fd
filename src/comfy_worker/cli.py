"""``comfy-worker``: the one command line.

This module parses arguments, builds :class:`~comfy_worker.config.Settings` and hands
off to ``comfy_worker.commands.<name>.main(args, settings) -> int``. It is the only
place where exceptions become exit codes: a :class:`WorkerError` prints its message
and hint (never a traceback, never a secret) and exits 1; bad configuration exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from comfy_worker.config import Settings, load_settings
from comfy_worker.errors import ConfigError, WorkerError

log = logging.getLogger(__name__)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--lock", type=Path, help="lock file (env COMFY_WORKER_LOCK; "
                   "default ./models.lock.json)")
    g.add_argument("--models-dir", type=Path, help="local models root (env "
                   "COMFY_WORKER_MODELS_DIR; default $COMFYUI_DIR/models or ./models)")
    g.add_argument("--volume", type=Path, help="network volume root; models are read from "
                   "and fetched into VOLUME/models (env COMFY_WORKER_VOLUME)")
    g.add_argument("--jobs", type=int, help="files downloaded at once (env COMFY_WORKER_JOBS, "
                   "default 4)")


def _add_comfy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ComfyUI")
    g.add_argument("--comfyui-dir", type=Path, help="ComfyUI checkout with main.py "
                   "(env COMFYUI_DIR)")
    g.add_argument("--cpu", action="store_true", default=None,
                   help="run ComfyUI with --cpu (env COMFYUI_CPU; default: when no GPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-worker",
        description="Serve ComfyUI workflows with locked, verified models.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lock = sub.add_parser("lock", help="edit and check models.lock.json")
    lock_sub = lock.add_subparsers(dest="lock_command", required=True, metavar="ACTION")
    add = lock_sub.add_parser(
        "add", help="pin a Hugging Face file or URL into the lock",
        description="Resolve SOURCE to a commit, size and sha256 and add it to the lock. "
        "SOURCE is hf://owner/repo[@revision]/path/in/repo or an https:// URL.",
    )
    add.add_argument("source", help="hf://owner/repo[@revision]/path or https://...")
    add.add_argument("--path", required=True, help="where it goes: FOLDER/NAME, e.g. "
                     "loras/style.safetensors")
    add.add_argument("--lock", type=Path, help="lock file to edit (created if missing)")
    add.add_argument("--replace", action="store_true", help="re-pin an already locked path")
    verify = lock_sub.add_parser("verify", help="check files in DIR against the lock")
    verify.add_argument("dir", type=Path, help="a models root (holding checkpoints/, ...)")
    verify.add_argument("--lock", type=Path, help="lock file")
    verify.add_argument("--fast", action="store_true",
                        help="size + safetensors header (or a still-valid record) instead "
                        "of a full sha256")
    verify.add_argument("--json", action="store_true", help="machine-readable result")

    sync = sub.add_parser("sync", help="make every locked model present and verified")
    _add_model_options(sync)
    sync.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    run = sub.add_parser("run", help="run one workflow locally and write its outputs")
    run.add_argument("workflow", type=Path, help="workflow in ComfyUI API format (JSON), or "
                     "a job input {\"workflow\": ..., \"images\": [...]}")
    run.add_argument("--images", nargs="*", type=Path, default=[],
                     help="input images to upload (referenced by file name)")
    run.add_argument("--out", type=Path, required=True, help="directory for the outputs")
    run.add_argument("--timeout", type=float, help="seconds for the job")
    _add_model_options(run)
    _add_comfy_options(run)

    runpod = sub.add_parser("runpod", help="serve as a RunPod serverless worker "
                            "(runpod SDK flags such as --test_input pass through)")
    _add_model_options(runpod)
    _add_comfy_options(runpod)

    serve = sub.add_parser("serve", help="serve the local HTTP API")
    serve.add_argument("--host", help="bind address (env COMFY_WORKER_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (env COMFY_WORKER_PORT, default 8000)")
    _add_model_options(serve)
    _add_comfy_options(serve)

    vast = sub.add_parser("vast", help="serve as a Vast.ai serverless PyWorker")
    _add_model_options(vast)
    _add_comfy_options(vast)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, then whichever flags were given."""
    flag_to_setting = {
        "lock": "lock_path", "models_dir": "models_dir", "volume": "volume", "jobs": "jobs",
        "comfyui_dir": "comfyui_dir", "cpu": "comfyui_cpu", "host": "host", "port": "port",
    }
    overrides = {
        setting: getattr(args, flag)
        for flag, setting in flag_to_setting.items()
        if getattr(args, flag, None) is not None
    }
    if overrides.get("jobs") is not None and overrides["jobs"] < 1:
        raise ConfigError(f"--jobs {overrides['jobs']} is below 1", hint="use --jobs 1 or more")
    return load_settings(**overrides)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else (logging.INFO if verbosity < 2 else
                                                   logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `runpod` hands the rest of the command line to the runpod SDK's own parser.
    if argv and argv[0] == "runpod":
        args, _unknown = parser.parse_known_args(argv)
    else:
        args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    name = args.command if args.command != "lock" else f"lock_{args.lock_command}"
    module_name = "lock" if args.command == "lock" else args.command
    try:
        settings = settings_from_args(args)
        module = importlib.import_module(f"comfy_worker.commands.{module_name}")
        handler = getattr(module, "main" if args.command != "lock" else name)
        return int(handler(args, settings) or 0)
    except ConfigError as exc:
        print(f"comfy-worker: configuration error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"comfy-worker: error [{exc.reference}]: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("comfy-worker: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
