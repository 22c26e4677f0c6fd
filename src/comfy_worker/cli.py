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
from collections.abc import Callable, Sequence
from pathlib import Path

from comfy_worker.config import SETTINGS, Settings, load_settings
from comfy_worker.entrypoints.platform import PLATFORMS, platform_named
from comfy_worker.errors import ConfigError, WorkerError
from comfy_worker.net.redact import RedactingFilter

log = logging.getLogger(__name__)


def _setting_flag(group: argparse._ArgumentGroup, flag: str, help_text: str, *,
                  metavar: str | None = None) -> None:
    """A flag of the settings table (config.SETTINGS): kept as text here and read by the
    same parser as its environment variable, so both reject a bad value alike."""
    env = next(s.env for s in SETTINGS if s.flag == flag)
    dest = "setting:" + flag
    help_text = f"{help_text} (env {env})"
    if flag == "--cpu":
        group.add_argument(flag, dest=dest, action="store_const", const="1", help=help_text)
    else:
        group.add_argument(flag, dest=dest, metavar=metavar, help=help_text)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    _setting_flag(g, "--lock", "lock file (default ./models.lock.json)", metavar="FILE")
    _setting_flag(g, "--models-dir", "local models root (default $COMFYUI_DIR/models or "
                  "./models)", metavar="DIR")
    _setting_flag(g, "--volume", "network volume root; models are read from and fetched "
                  "into VOLUME/models", metavar="DIR")
    _setting_flag(g, "--jobs", "files downloaded at once (default 4)", metavar="N")


def _add_serving_model_options(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)
    g = p.add_argument_group("models on demand")
    _setting_flag(g, "--sync-mode", "on-demand (default): ready when ComfyUI is up, a job "
                  "waits only for its own models; all: ready once every locked model is "
                  "present", metavar="MODE")


def _add_comfy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ComfyUI")
    _setting_flag(g, "--comfyui-dir", "ComfyUI checkout with main.py", metavar="DIR")
    _setting_flag(g, "--cpu", "run ComfyUI with --cpu (default: when no GPU is seen)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-worker",
        description="Serve ComfyUI workflows with locked, verified models.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="debug logging (default: info)")
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
    from_wf = lock_sub.add_parser(
        "from-workflow", help="pin every model a workflow declares into the lock",
        description="Add to the lock every model FILE declares (the editor's templates "
        "list them on loader nodes: properties.models). A huggingface.co resolve URL is "
        "pinned to its commit with the Hub's sha256 and size (no download); any other URL "
        "is hashed by one streamed download. Model names the workflow uses that nobody "
        "declares are listed as needing a source (exit 1).")
    from_wf.add_argument("file", type=Path, help="workflow JSON (UI or API format), job "
                         "input, or a PNG/WEBP ComfyUI saved")
    from_wf.add_argument("--lock", type=Path, help="lock file to edit (created if missing)")
    from_wf.add_argument("--dry-run", action="store_true",
                         help="resolve and print the entries, write nothing")
    from_wf.add_argument("--json", action="store_true", help="machine-readable summary")
    verify = lock_sub.add_parser("verify", help="check files in DIR against the lock")
    verify.add_argument("dir", type=Path, help="a models root (holding checkpoints/, ...)")
    verify.add_argument("--lock", type=Path, help="lock file")
    verify.add_argument("--fast", action="store_true",
                        help="size + safetensors header (or a still-valid record) instead "
                        "of a full sha256")
    verify.add_argument("--json", action="store_true", help="machine-readable result")

    wf = sub.add_parser("workflow", help="work with workflow files")
    wf_sub = wf.add_subparsers(dest="workflow_command", required=True, metavar="ACTION")
    convert = wf_sub.add_parser(
        "convert", help="print the API prompt of a UI-format workflow (or a PNG/WEBP)",
        description="Convert FILE (the editor's Save format, API format, or a PNG/WEBP "
        "ComfyUI saved) to the API prompt ComfyUI's editor would queue. Without "
        "--object-info, ComfyUI is started (as `run` does) to read its node definitions.")
    convert.add_argument("file", type=Path, help="workflow JSON, PNG or WEBP")
    convert.add_argument("--object-info", dest="object_info", metavar="FILE|URL",
                         help="saved /object_info JSON, or a running ComfyUI's URL")
    convert.add_argument("--out", type=Path, help="write the prompt here (default: stdout)")
    _add_comfy_options(convert)

    sync = sub.add_parser("sync", help="make every locked model present and verified")
    _add_model_options(sync)
    sync.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    run = sub.add_parser("run", help="run one workflow locally and write its outputs")
    run.add_argument("workflow", type=Path, help="workflow JSON (API or UI format), a job "
                     "input {\"workflow\": ..., \"images\": [...]}, or a PNG/WEBP "
                     "ComfyUI saved")
    run.add_argument("--images", nargs="*", type=Path, default=[],
                     help="input images to upload (referenced by file name)")
    run.add_argument("--out", type=Path, required=True, help="directory for the outputs")
    run.add_argument("--timeout", type=float, help="seconds for the job")
    _add_serving_model_options(run)
    _add_comfy_options(run)

    for platform in PLATFORMS:  # runpod, serve, vast: entrypoints/platform.py
        cmd = sub.add_parser(platform.name, help=platform.summary)
        if platform.flags:
            g = cmd.add_argument_group(platform.summary)
            for flag in platform.flags:
                _setting_flag(g, flag.flag, flag.help, metavar=flag.metavar)
        _add_serving_model_options(cmd)
        _add_comfy_options(cmd)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, then whichever setting flags were given (same parsers)."""
    flags = {dest.removeprefix("setting:"): value for dest, value in vars(args).items()
             if dest.startswith("setting:") and value is not None}
    return load_settings(flags=flags)


QUIET_LOGGERS = ("httpx", "httpx2")
"""Libraries that log every request at INFO (huggingface_hub's HTTP client): WARNING
and up only, so our per-file lines stay readable."""


def _setup_logging(verbosity: int) -> None:
    """The one place logging is configured: our lines on stderr, INFO (``-v``: DEBUG).
    Every URL in every line is redacted (no query string, no credentials)."""
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _handler(args: argparse.Namespace) -> Callable[[argparse.Namespace, Settings], int]:
    """The function of ``comfy_worker.commands`` that runs the command."""
    name = "platform" if platform_named(args.command) is not None else args.command
    module = importlib.import_module(f"comfy_worker.commands.{name}")
    return getattr(module, _handler_name(args))  # type: ignore[no-any-return]


def _handler_name(args: argparse.Namespace) -> str:
    if args.command == "lock":
        return "lock_" + args.lock_command.replace("-", "_")
    if args.command == "workflow":
        return str(args.workflow_command)
    return "main"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # A platform with an SDK of its own (runpod) hands it the rest of the command line.
    platform = platform_named(argv[0]) if argv else None
    if platform is not None and platform.sdk_args:
        args, _unknown = parser.parse_known_args(argv)
    else:
        args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        settings = settings_from_args(args)
        return int(_handler(args)(args, settings) or 0)
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
