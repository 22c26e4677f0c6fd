"""The Vast.ai template command in docs/deploy.md, checked with the vastai CLI itself.

The documented ``vastai create template ...`` is taken from the doc as a user would copy
it, split like a shell would, and parsed by the CLI's own argument parser in the vastai
virtualenv (scripts/install_vast_pyworker.sh, as tests/test_vast_pyworker.py builds it).
Nothing is sent: the command's function is never called. ``vastai create template --help``
must list every flag the doc uses, and the parsed template must be in docker-entrypoint
launch mode with the PyWorker's port, known settings and enough disk.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "deploy.md"
IMAGE_DISK_GB = 12  # the GPU image unpacked (~9 GB) plus headroom

PARSE = r"""
import json, sys
from vastai.cli import main as cli
from vastai.cli.commands import offers  # registers `create template` on cli.parser
from vastai.api import offers as offers_api

args = cli.parser.parse_args(sys.argv[1:])
fields = offers_api.template_fields_from_flags(
    ssh=args.ssh, jupyter=args.jupyter, direct=args.direct, jupyter_lab=args.jupyter_lab,
    login=args.login, hide_readme=args.hide_readme, public=args.public,
    search_params=args.search_params, no_default=args.no_default, always_default=True)
print(json.dumps({"command": args.func.__name__, "name": args.name, "image": args.image,
                  "image_tag": args.image_tag, "env": args.env, "onstart": args.onstart_cmd,
                  "disk_space": args.disk_space, "runtype": fields["runtype"],
                  "private": fields["private"], "filters": fields["extra_filters"]}))
"""


def documented_command() -> list[str]:
    """The ``vastai create template`` command from docs/deploy.md, as argv."""
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)
    commands = [b for b in blocks if b.lstrip().startswith("vastai create template")]
    assert len(commands) == 1, "docs/deploy.md must show one `vastai create template` block"
    argv = shlex.split(commands[0].replace("\\\n", " "))
    assert argv[:3] == ["vastai", "create", "template"]
    return argv[1:]


def _parse(vast_python: str, argv: list[str]) -> dict[str, Any]:
    proc = subprocess.run([vast_python, "-I", "-c", PARSE, *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "VAST_API_KEY": "unused"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_every_documented_flag_is_in_the_clis_help(vast_python: str) -> None:
    proc = subprocess.run([str(Path(vast_python).parent / "vastai"), "create", "template",
                           "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    flags = [a for a in documented_command() if a.startswith("--")]
    assert len(flags) >= 5
    for flag in flags:
        assert re.search(rf"(^|\s){re.escape(flag)}(\s|$)", proc.stdout), \
            f"`vastai create template --help` has no {flag}"


def test_the_documented_template_parses_as_an_entrypoint_launch(vast_python: str) -> None:
    parsed = _parse(vast_python, documented_command())
    assert parsed["command"] == "create__template"
    # No --ssh/--jupyter: Vast runs the image's own entrypoint (scripts/start.sh).
    assert parsed["runtype"] == "args"
    assert parsed["onstart"] is None
    assert parsed["private"] is True
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert parsed["image"].endswith("/comfy-worker")
    assert parsed["image_tag"] == version, "document the release users should deploy"
    assert float(parsed["filters"]["cuda_max_good"]["gte"]) == 12.8  # torch's cu128 wheels


def test_the_documented_docker_options_open_the_pyworker_port_and_set_known_settings(
    vast_python: str,
) -> None:
    parsed = _parse(vast_python, documented_command())
    options = shlex.split(parsed["env"])
    ports = [options[i + 1] for i, o in enumerate(options) if o == "-p"]
    assert ports == ["3000:3000"]  # the PyWorker's WORKER_PORT (docs/serving.md)
    env = dict(options[i + 1].split("=", 1) for i, o in enumerate(options) if o == "-e")
    assert env["MODE"] == "vast"
    assert env["COMFY_WORKER_VOLUME"] == "/workspace"
    readme = (REPO / "README.md").read_text().split("\n## Settings\n", 1)[1]
    for key in env:
        assert f"`{key}`" in readme, f"{key} is not a documented setting"


def test_the_documented_disk_holds_the_image_and_the_default_models(vast_python: str) -> None:
    parsed = _parse(vast_python, documented_command())
    lock = json.loads((REPO / "models.lock.json").read_text())
    models_gb = sum(m["size"] for m in lock["models"]) / 1e9
    assert float(parsed["disk_space"]) >= IMAGE_DISK_GB + models_gb


def test_the_parser_rejects_a_misspelled_flag(vast_python: str) -> None:
    """The check is real: the CLI's parser refuses what it does not know."""
    argv = [a.replace("--disk_space", "--disk-space") for a in documented_command()]
    proc = subprocess.run([vast_python, "-I", "-c", PARSE, *argv], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "--disk-space" in proc.stderr
