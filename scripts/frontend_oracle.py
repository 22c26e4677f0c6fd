#!/usr/bin/env python3
"""ComfyUI's own editor as an oracle: UI-format workflow in, the API prompt it would queue out.

Starts a real ComfyUI (or connects to one with ``--url``), opens its frontend in headless
Chromium with Playwright, waits until the node definitions are registered, then for each
workflow runs ``app.loadGraphData(wf, true, false, null)`` and
``(await app.graphToPrompt()).output``.

Regenerate the committed fixtures (``tests/fixtures/workflows/``)::

    export COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/venv/bin/python
    .venv/bin/python scripts/frontend_oracle.py fixtures

Compare one workflow (prints the frontend's prompt)::

    .venv/bin/python scripts/frontend_oracle.py convert my_workflow.json

Needs ``playwright`` (pip; never ``playwright install``) and Debian's ``chromium``
(``/usr/bin/chromium``). The ``FrontendOracle`` class is also used by
``tests/test_workflow_oracle.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from comfy_worker.comfy.process import ComfyProcess, LaunchConfig  # noqa: E402

log = logging.getLogger("frontend_oracle")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
COMFY_ARGS = ("--disable-all-custom-nodes", "--disable-api-nodes")
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "workflows"
TEMPLATE_PACKAGE_PREFIX = "comfyui_workflow_templates"

# Ready once the app exists and the backend's node definitions are registered: before
# that, graphToPrompt silently yields class_type undefined and inputs named UNKNOWN.
_READY_JS = """() => !!(window.app && window.app.graph && window.LiteGraph
    && window.LiteGraph.registered_node_types
    && window.LiteGraph.registered_node_types.SaveImage)"""

_CONVERT_JS = """async ([wf, fixedRandom]) => {
    const random = Math.random;
    if (fixedRandom !== null) Math.random = () => fixedRandom;
    try {
        await window.app.loadGraphData(wf, true, false, null);
        const d = new Date();
        const now = [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(),
                     d.getMinutes(), d.getSeconds()];
        const out = (await window.app.graphToPrompt()).output;
        // undefined (a class_type the frontend cannot map) would vanish in transit
        return {now, output: JSON.parse(JSON.stringify(out, (k, v) =>
            (k === "class_type" && v === undefined) ? "__undefined__" : v))};
    } finally {
        Math.random = random;
    }
}"""


def browser_available() -> str | None:
    """None when Playwright and Chromium are usable here, else why not."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@contextlib.contextmanager
def running_comfyui(comfyui_dir: Path, python: str, *,
                    extra_args: tuple[str, ...] = COMFY_ARGS) -> Iterator[str]:
    """A CPU ComfyUI on a free loopback port with throw-away directories; yields its URL."""
    work = Path(tempfile.mkdtemp(prefix="frontend-oracle-"))
    proc = ComfyProcess(LaunchConfig(comfyui_dir=comfyui_dir, python=python, work_dir=work,
                                     cpu=True, extra_args=extra_args, boot_timeout=180.0))
    try:
        proc.start()
        yield proc.base_url
    finally:
        proc.stop()
        shutil.rmtree(work, ignore_errors=True)


class FrontendOracle:
    """The editor of a running ComfyUI, driven in headless Chromium."""

    def __init__(self, url: str, *, timeout_s: float = 120.0,
                 object_info: Mapping[str, Any] | None = None) -> None:
        """``object_info``: serve these node definitions to the editor instead of the
        backend's (the editor then knows node types the backend does not have)."""
        from playwright.sync_api import sync_playwright

        self.url = url
        self._pw = sync_playwright().start()
        try:
            exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
            self._browser = self._pw.chromium.launch(executable_path=exe, headless=True,
                                                     args=CHROMIUM_ARGS)
            self._page = self._browser.new_page()
            self.console: list[str] = []
            self._page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
            if object_info is not None:
                body = json.dumps(object_info)
                self._page.route("**/object_info", lambda route: route.fulfill(
                    status=200, content_type="application/json", body=body))
            started = time.monotonic()
            self._page.goto(url, wait_until="domcontentloaded", timeout=timeout_s * 1000)
            self._page.wait_for_function(_READY_JS, timeout=timeout_s * 1000)
            log.info("frontend ready in %.1f s", time.monotonic() - started)
        except BaseException:
            self.close()
            raise

    def version(self) -> str:
        return str(self._page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? ''"))

    def object_info(self) -> dict[str, Any]:
        return self._page.evaluate("async () => (await (await fetch('/object_info')).json())")

    def convert(self, workflow: Mapping[str, Any], *, fixed_random: float | None = None
                ) -> dict[str, Any]:
        """The API prompt the editor would queue for ``workflow``. ``fixed_random``: what
        ``Math.random()`` returns meanwhile (makes ``{a|b}`` dynamic prompts repeatable)."""
        return self.convert_timed(workflow, fixed_random=fixed_random)[0]

    def convert_timed(self, workflow: Mapping[str, Any], *, fixed_random: float | None = None
                      ) -> tuple[dict[str, Any], datetime]:
        """:meth:`convert` plus the browser's local time when it converted (for
        ``%date:...%`` replacements)."""
        answer = self._page.evaluate(_CONVERT_JS, [dict(workflow), fixed_random])
        return answer["output"], datetime(*answer["now"])

    def close(self) -> None:
        for closer in (getattr(self, "_browser", None), self._pw):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close() if closer is not self._pw else closer.stop()

    def __enter__(self) -> FrontendOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- templates ------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    name: str          # file stem, unique across the packages
    package: str       # e.g. comfyui_workflow_templates_media_image
    version: str
    path: Path


def site_packages_of(python: str) -> list[Path]:
    import subprocess

    code = "import site; print('\\n'.join(site.getsitepackages()))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return [Path(p) for p in out.stdout.split() if p]


def find_templates(site_dirs: list[Path]) -> list[Template]:
    found: dict[str, Template] = {}
    for site in site_dirs:
        for pkg in sorted(site.glob(f"{TEMPLATE_PACKAGE_PREFIX}*")):
            if not pkg.is_dir() or pkg.name.endswith(".dist-info"):
                continue
            version = ""
            for info in site.glob(f"{pkg.name}-*.dist-info"):
                version = info.name[len(pkg.name) + 1:-len(".dist-info")]
            for path in sorted(pkg.rglob("*.json")):
                try:
                    doc = json.loads(path.read_text(encoding="utf-8"))
                except ValueError:
                    continue
                if not (isinstance(doc, dict) and "nodes" in doc):
                    continue  # manifests, index files
                found.setdefault(path.stem, Template(path.stem, pkg.name, version, path))
    return sorted(found.values(), key=lambda t: t.name)


def node_types(workflow: Mapping[str, Any]) -> set[str]:
    """Every node type used, subgraph definitions included, subgraph ids excluded."""
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    ids = {s.get("id") for s in subgraphs}
    types: set[str] = set()
    for nodes in [workflow.get("nodes") or []] + [s.get("nodes") or [] for s in subgraphs]:
        types.update(str(n.get("type")) for n in nodes if n.get("type") not in ids)
    return types


# The frontend's own virtual nodes: no backend class, never in a prompt.
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def missing_types(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> list[str]:
    return sorted(t for t in node_types(workflow) if t not in object_info
                  and t not in FRONTEND_ONLY)


# --- commands -------------------------------------------------------------------------


def _gz_json(path: Path, doc: Any) -> None:
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))


def cmd_fixtures(args: argparse.Namespace, url: str) -> int:
    templates = find_templates(site_packages_of(args.python))
    out = Path(args.out)
    (out / "templates").mkdir(parents=True, exist_ok=True)
    (out / "expected").mkdir(parents=True, exist_ok=True)
    with FrontendOracle(url) as oracle:
        object_info = oracle.object_info()
        _gz_json(out / "object_info.json.gz", object_info)
        index: dict[str, Any] = {"frontend_version": oracle.version(), "templates": {},
                                 "skipped": {}}
        for i, t in enumerate(templates, 1):
            wf = json.loads(t.path.read_text(encoding="utf-8"))
            missing = missing_types(wf, object_info)
            if missing:
                index["skipped"][t.name] = {"package": t.package, "version": t.version,
                                            "unknown_node_types": missing}
                log.info("[%d/%d] %s: skipped (unknown node types %s)", i, len(templates),
                         t.name, ", ".join(missing))
                continue
            started = time.monotonic()
            try:
                prompt = oracle.convert(wf)
            except Exception as exc:  # the frontend itself fails on it: record why
                index["skipped"][t.name] = {"package": t.package, "version": t.version,
                                            "frontend_error": str(exc).splitlines()[0]}
                log.warning("[%d/%d] %s: frontend error %s", i, len(templates), t.name, exc)
                continue
            (out / "templates" / f"{t.name}.json.gz").write_bytes(
                gzip.compress(t.path.read_bytes(), mtime=0))
            _gz_json(out / "expected" / f"{t.name}.json.gz", prompt)
            index["templates"][t.name] = {"package": t.package, "version": t.version}
            log.info("[%d/%d] %s: %d nodes (%.1f s)", i, len(templates), t.name, len(prompt),
                     time.monotonic() - started)
    (out / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    log.info("%d templates compared, %d skipped", len(index["templates"]),
             len(index["skipped"]))
    return 0


def cmd_cases(args: argparse.Namespace, url: str) -> int:
    """Record the frontend's answer for every case of tests/support/workflow_cases.py."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from support import workflow_cases as wc

    out = Path(args.out) / "cases"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.json.gz"):
        old.unlink()
    info = wc.object_info()
    index = json.loads((Path(args.out) / "index.json").read_text(encoding="utf-8"))
    cases = [(name, build()) for name, build in wc.CASES.items()]
    cases += list(wc.random_cases(sorted(index["templates"]), args.random, info))
    errors = 0
    with FrontendOracle(url) as oracle:
        for i, (name, (workflow, fixed_random)) in enumerate(cases, 1):
            record: dict[str, Any] = {"workflow": workflow, "fixed_random": fixed_random}
            try:
                prompt, now = oracle.convert_timed(workflow, fixed_random=fixed_random)
                record["expected"] = prompt
                record["now"] = now.isoformat()
            except Exception as exc:  # the frontend cannot queue it either: keep why
                record["error"] = str(exc).splitlines()[0].replace("Page.evaluate: ", "")
                errors += 1
            _gz_json(out / f"{name}.json.gz", record)
            log.info("[%d/%d] %s: %s", i, len(cases), name,
                     "frontend error" if "error" in record else f"{len(prompt)} nodes")
    log.info("%d cases recorded (%d the frontend rejects)", len(cases), errors)
    return 0


def cmd_convert(args: argparse.Namespace, url: str) -> int:
    with FrontendOracle(url) as oracle:
        for f in args.files:
            prompt = oracle.convert(json.loads(Path(f).read_text(encoding="utf-8")))
            print(json.dumps(prompt, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    from comfy_worker.config import load_settings

    settings = load_settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="use this running ComfyUI instead of starting one")
    p.add_argument("--comfyui-dir", default=str(settings.comfyui_dir or ""),
                   help="ComfyUI checkout (default COMFYUI_DIR)")
    p.add_argument("--python", default=settings.comfyui_python,
                   help="ComfyUI's Python (default COMFYUI_PYTHON)")
    p.add_argument("--with-api-nodes", action="store_true",
                   help="start ComfyUI without --disable-api-nodes")
    sub = p.add_subparsers(dest="command", required=True)
    fx = sub.add_parser("fixtures", help="regenerate tests/fixtures/workflows")
    fx.add_argument("--out", default=str(FIXTURES))
    cs = sub.add_parser("cases", help="record the frontend's answers for the test cases "
                        "(tests/support/workflow_cases.py) into FIXTURES/cases")
    cs.add_argument("--out", default=str(FIXTURES))
    cs.add_argument("--random", type=int, default=40, help="random template variants")
    cv = sub.add_parser("convert", help="print the frontend's API prompt for files")
    cv.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    why = browser_available()
    if why:
        p.error(why)
    run = {"fixtures": cmd_fixtures, "cases": cmd_cases, "convert": cmd_convert}[args.command]
    if args.url:
        return run(args, args.url)
    if not args.comfyui_dir:
        p.error("set COMFYUI_DIR (or --comfyui-dir), or pass --url")
    extra = ("--disable-all-custom-nodes",) if args.with_api_nodes else COMFY_ARGS
    with running_comfyui(Path(args.comfyui_dir), args.python, extra_args=extra) as url:
        return run(args, url)


if __name__ == "__main__":
    sys.exit(main())
