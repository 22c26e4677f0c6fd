#!/usr/bin/env python3
"""ComfyUI's own editor as an oracle: UI-format workflow in, the API prompt it would queue out.

Starts a real ComfyUI (or connects to one with ``--url``), opens its frontend in headless
Chromium with Playwright, waits until the node definitions are registered, then for each
workflow runs ``app.loadGraphData(wf, true, false, null)`` and
``(await app.graphToPrompt()).output``.

Regenerate the committed fixtures (``tests/fixtures/workflows/``) with ComfyUI v0.33.0, the
editor it serves (``comfyui-frontend-package`` 1.48.7) and the templates it pins
(``comfyui-workflow-templates`` 0.11.41) installed in its Python::

    export COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/venv/bin/python
    .venv/bin/python scripts/frontend_oracle.py fixtures      # templates, legacy, expected
    .venv/bin/python scripts/frontend_oracle.py cases         # tests/support/workflow_cases.py
    .venv/bin/python scripts/frontend_oracle.py labels        # workflow/frontend_labels.py

The legacy templates (the ones ComfyUI 0.3.75 shipped, saved by older editors) are read
from the committed ``legacy.tar.xz``; ``fixtures --legacy-wheels W...`` reads them from the
``comfyui_workflow_templates_media_*`` wheels instead.

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
import io
import json
import logging
import lzma
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
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
# API nodes stay on, as the worker runs ComfyUI: their templates are compared too.
COMFY_ARGS = ("--disable-all-custom-nodes",)
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "workflows"
LABELS_MODULE = REPO_ROOT / "src" / "comfy_worker" / "workflow" / "frontend_labels.py"
TEMPLATE_PACKAGE_PREFIX = "comfyui_workflow_templates"
# What Math.random() returns while a template converts ({a|b} dynamic prompts).
TEMPLATE_RANDOM = 0.0

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

_VERSION_JS = """async () => (await window.app.graphToPrompt()).workflow.extra.frontendVersion
    ?? window.__COMFYUI_FRONTEND_VERSION__ ?? ''"""

# The title the editor gives each registered type (its English labels, else display_name).
_TITLES_JS = """() => Object.fromEntries(Object.entries(window.LiteGraph.registered_node_types)
    .map(([type, cls]) => [type, cls.title]))"""


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
                                     cpu=True, extra_args=extra_args, boot_timeout=300.0))
    try:
        proc.start()
        yield proc.base_url
    finally:
        proc.stop()
        shutil.rmtree(work, ignore_errors=True)


class FrontendOracle:
    """The editor of a running ComfyUI, driven in headless Chromium."""

    def __init__(self, url: str, *, timeout_s: float = 120.0,
                 object_info: Mapping[str, Any] | None = None,
                 _shared: FrontendOracle | None = None) -> None:
        """``object_info``: serve these node definitions to the editor instead of the
        backend's (the editor then registers exactly those node types)."""
        self.url = url
        self._owner = _shared is None
        if _shared is None:
            from playwright.sync_api import sync_playwright

            self._pw = sync_playwright().start()
        else:
            self._pw, self._browser = _shared._pw, _shared._browser
        try:
            if _shared is None:
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
        """The frontend's version (what it writes into a workflow's ``extra``)."""
        return str(self._page.evaluate(_VERSION_JS))

    def object_info(self) -> dict[str, Any]:
        return self._page.evaluate("async () => (await (await fetch('/object_info')).json())")

    def titles(self) -> dict[str, str]:
        return self._page.evaluate(_TITLES_JS)

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

    def with_object_info(self, object_info: Mapping[str, Any]) -> FrontendOracle:
        """Another editor page, in the same browser, given these node definitions."""
        return FrontendOracle(self.url, object_info=object_info, _shared=self)

    def close(self) -> None:
        if not self._owner:
            with contextlib.suppress(Exception):
                self._page.close()
            return
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
    name: str          # file stem, unique within one set
    package: str       # e.g. comfyui_workflow_templates_json
    version: str
    data: bytes        # the file, byte for byte


def site_packages_of(python: str) -> list[Path]:
    import subprocess

    code = "import site; print('\\n'.join(site.getsitepackages()))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return [Path(p) for p in out.stdout.split() if p]


def _is_workflow(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and "nodes" in doc


def find_templates(site_dirs: list[Path]) -> tuple[list[Template], str]:
    """The templates ComfyUI's Python has installed, and the version of the
    ``comfyui-workflow-templates`` package that pins them."""
    found: dict[str, Template] = {}
    meta = ""
    for site in site_dirs:
        for info in site.glob(f"{TEMPLATE_PACKAGE_PREFIX}-*.dist-info"):
            meta = info.name[len(TEMPLATE_PACKAGE_PREFIX) + 1:-len(".dist-info")]
        for pkg in sorted(site.glob(f"{TEMPLATE_PACKAGE_PREFIX}*")):
            if not pkg.is_dir() or pkg.name.endswith(".dist-info"):
                continue
            version = ""
            for info in site.glob(f"{pkg.name}-*.dist-info"):
                version = info.name[len(pkg.name) + 1:-len(".dist-info")]
            for path in sorted(pkg.rglob("*.json")):
                data = path.read_bytes()
                if _is_workflow(data):      # not manifests or index files
                    found.setdefault(path.stem, Template(path.stem, pkg.name, version, data))
    return sorted(found.values(), key=lambda t: t.name), meta


def templates_from_wheels(wheels: Iterable[Path]) -> list[Template]:
    """The templates inside ``comfyui_workflow_templates_*`` wheels."""
    found: dict[str, Template] = {}
    for wheel in wheels:
        package, version = wheel.name.split("-")[:2]
        with zipfile.ZipFile(wheel) as zf:
            for member in sorted(zf.namelist()):
                if member.endswith(".json") and "/templates/" in member:
                    data = zf.read(member)
                    if _is_workflow(data):
                        name = Path(member).stem
                        found.setdefault(name, Template(name, package, version, data))
    return sorted(found.values(), key=lambda t: t.name)


def read_archive(path: Path) -> dict[str, bytes]:
    """``NAME.json`` members of a ``.tar.xz`` → their bytes."""
    out: dict[str, bytes] = {}
    with tarfile.open(path, "r:xz") as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            if handle is not None:
                out[member.name] = handle.read()
    return out


def write_archive(path: Path, files: Mapping[str, bytes]) -> None:
    """A reproducible ``.tar.xz`` (sorted, mtime 0, no owner)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime, info.mode, info.uname, info.gname = 0, 0o644, "", ""
            tar.addfile(info, io.BytesIO(files[name]))
    path.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))


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


def _xz_json(path: Path, doc: Any) -> None:
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"
    path.write_bytes(lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))


def _record(oracle: FrontendOracle, templates: list[Template], object_info: Mapping[str, Any],
            label: str) -> tuple[dict[str, bytes], dict[str, Any], dict[str, Any],
                                 dict[str, Any]]:
    files: dict[str, bytes] = {}
    expected: dict[str, Any] = {}
    listed: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    for i, t in enumerate(templates, 1):
        wf = json.loads(t.data)
        source = {"package": t.package, "version": t.version}
        missing = missing_types(wf, object_info)
        if missing:
            skipped[t.name] = {**source, "unknown_node_types": missing}
            log.info("%s [%d/%d] %s: skipped (unknown node types %s)", label, i,
                     len(templates), t.name, ", ".join(missing))
            continue
        started = time.monotonic()
        try:
            prompt, now = oracle.convert_timed(wf, fixed_random=TEMPLATE_RANDOM)
        except Exception as exc:  # the frontend itself fails on it: record why
            skipped[t.name] = {**source, "frontend_error": str(exc).splitlines()[0]}
            log.warning("%s [%d/%d] %s: frontend error %s", label, i, len(templates),
                        t.name, exc)
            continue
        files[f"{t.name}.json"] = t.data
        expected[t.name] = {"now": now.isoformat(), "prompt": prompt}
        listed[t.name] = source
        log.info("%s [%d/%d] %s: %d nodes (%.1f s)", label, i, len(templates), t.name,
                 len(prompt), time.monotonic() - started)
    return files, expected, listed, skipped


def cmd_fixtures(args: argparse.Namespace, url: str) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    templates, meta = find_templates(site_packages_of(args.python))
    if args.legacy_wheels:
        legacy = templates_from_wheels(Path(w) for w in args.legacy_wheels)
    else:
        old_index = json.loads((out / "index.json").read_text(encoding="utf-8"))
        old_sources = {**old_index.get("legacy", {}), **old_index.get("legacy_skipped", {})}
        legacy = [Template(name[:-5], old_sources.get(name[:-5], {}).get("package", ""),
                           old_sources.get(name[:-5], {}).get("version", ""), data)
                  for name, data in sorted(read_archive(out / "legacy.tar.xz").items())]
    with FrontendOracle(url) as oracle:
        object_info = oracle.object_info()
        version = oracle.version()
        new = _record(oracle, templates, object_info, "templates")
        old = _record(oracle, legacy, object_info, "legacy")
    _gz_json(out / "object_info.json.gz", object_info)
    write_archive(out / "templates.tar.xz", new[0])
    write_archive(out / "legacy.tar.xz", old[0])
    _xz_json(out / "expected.json.xz", {"templates": new[1], "legacy": old[1]})
    index = {"frontend_version": version, "templates_version": meta,
             "template_random": TEMPLATE_RANDOM,
             "templates": new[2], "skipped": new[3], "legacy": old[2], "legacy_skipped": old[3]}
    (out / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    log.info("%d templates recorded (%d skipped), %d legacy (%d skipped)", len(new[2]),
             len(new[3]), len(old[2]), len(old[3]))
    return 0


def cmd_cases(args: argparse.Namespace, url: str) -> int:
    """Record the frontend's answer for every case of tests/support/workflow_cases.py.
    A case that brings its own node definitions gets an editor loaded with them."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from support import workflow_cases as wc

    out = Path(args.out) / "cases"
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only or [])
    if not wanted:
        for old in out.glob("*.json.gz"):
            old.unlink()
    info = wc.object_info()
    cases: list[tuple[str, Any]] = [(name, build()) for name, build in wc.CASES.items()
                                    if not wanted or name in wanted]
    if not wanted:
        cases += list(wc.random_cases(args.random, info))
    groups: dict[str, list[tuple[str, Any]]] = {}
    for name, case in cases:
        groups.setdefault(json.dumps(case.object_info or {}, sort_keys=True), []).append(
            (name, case))
    errors = done = 0
    for key, members in groups.items():
        overrides = json.loads(key)
        served = {**info, **overrides} if overrides else None
        if served is not None:
            served = {k: v for k, v in served.items() if v is not None}
        with FrontendOracle(url, object_info=served) as oracle:
            for name, case in members:
                record: dict[str, Any] = {"workflow": case.workflow,
                                          "fixed_random": case.fixed_random}
                if overrides:
                    record["object_info"] = overrides
                try:
                    prompt, now = oracle.convert_timed(case.workflow,
                                                       fixed_random=case.fixed_random)
                    record["expected"] = prompt
                    record["now"] = now.isoformat()
                except Exception as exc:  # the frontend cannot queue it either: keep why
                    record["error"] = str(exc).splitlines()[0].replace("Page.evaluate: ", "")
                    errors += 1
                _gz_json(out / f"{name}.json.gz", record)
                done += 1
                log.info("[%d/%d] %s: %s", done, len(cases), name,
                         "frontend error" if "error" in record
                         else f"{len(record['expected'])} nodes")
    log.info("%d cases recorded (%d the frontend rejects)", len(cases), errors)
    return 0


def cmd_labels(args: argparse.Namespace, url: str) -> int:
    """Regenerate workflow/frontend_labels.py: the editor's titles that differ from the
    ``display_name`` of the running ComfyUI (and of every ``--object-info`` file given)."""
    sources: list[Mapping[str, Any] | None] = [None]
    sources += [json.loads(gzip.decompress(Path(p).read_bytes()) if p.endswith(".gz")
                           else Path(p).read_bytes()) for p in args.object_info or []]
    labels: dict[str, str] = {}
    for served in sources:
        with FrontendOracle(url, object_info=served) as oracle:
            info = served if served is not None else oracle.object_info()
            version = oracle.version()
            for name, title in oracle.titles().items():
                entry = info.get(name)
                if isinstance(entry, dict) and isinstance(title, str) \
                        and title != (entry.get("display_name") or name):
                    labels[name] = title
    lines = [
        '"""The editor\'s own English labels for node types where they differ from ComfyUI\'s',
        "``display_name`` (generated; do not edit).",
        "",
        f"Frontend {version} titles a node ``st(\"nodeDefs.<type>.display_name\", "
        "display_name)``:",
        "its bundled English locale wins over the server's name. Only labels that differ "
        "from the",
        "``display_name`` of the ComfyUIs they were read against are listed. Regenerate with",
        "``scripts/frontend_oracle.py labels`` (see its ``--object-info``).",
        '"""', "", "from __future__ import annotations", "", "from typing import Final", "",
        "FRONTEND_LABELS: Final[dict[str, str]] = {"]
    lines += [f"    {json.dumps(k)}: {json.dumps(labels[k], ensure_ascii=False)},"
              for k in sorted(labels)]
    lines.append("}")
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    log.info("%d labels written to %s", len(labels), args.out)
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
    p.add_argument("--without-api-nodes", action="store_true",
                   help="start ComfyUI with --disable-api-nodes")
    sub = p.add_subparsers(dest="command", required=True)
    fx = sub.add_parser("fixtures", help="regenerate tests/fixtures/workflows")
    fx.add_argument("--out", default=str(FIXTURES))
    fx.add_argument("--legacy-wheels", nargs="*",
                    help="read the legacy templates from these wheels (default: legacy.tar.xz)")
    cs = sub.add_parser("cases", help="record the frontend's answers for the test cases "
                        "(tests/support/workflow_cases.py) into FIXTURES/cases")
    cs.add_argument("--out", default=str(FIXTURES))
    cs.add_argument("--random", type=int, default=60, help="random template variants")
    cs.add_argument("only", nargs="*", help="record only these cases")
    lb = sub.add_parser("labels", help="regenerate src/comfy_worker/workflow/frontend_labels.py")
    lb.add_argument("--out", default=str(LABELS_MODULE))
    lb.add_argument("--object-info", action="append",
                    help="also read labels against this /object_info (JSON or .json.gz)")
    cv = sub.add_parser("convert", help="print the frontend's API prompt for files")
    cv.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    why = browser_available()
    if why:
        p.error(why)
    run = {"fixtures": cmd_fixtures, "cases": cmd_cases, "labels": cmd_labels,
           "convert": cmd_convert}[args.command]
    if args.url:
        return run(args, args.url)
    if not args.comfyui_dir:
        p.error("set COMFYUI_DIR (or --comfyui-dir), or pass --url")
    extra = (*COMFY_ARGS, "--disable-api-nodes") if args.without_api_nodes else COMFY_ARGS
    with running_comfyui(Path(args.comfyui_dir), args.python, extra_args=extra) as url:
        return run(args, url)


if __name__ == "__main__":
    sys.exit(main())
