"""Make ``import torchvision`` work when its C++ ops are missing (CPU torch + PyPI build).

PyPI's torchvision wheels are linked against CUDA torch. Next to a CPU torch their
compiled ops do not load, and ``torchvision/_meta_registrations.py`` then fails at import
time registering fake kernels for ``torchvision::nms`` / ``torchvision::qnms`` ("operator
torchvision::nms does not exist"). Those two registrations are only needed when the ops
exist, so this wraps each in a check of ``torchvision.extension._has_ops()``.

Run with the interpreter that has torchvision installed. Exit 0 when torchvision imports
(patched or not), 1 otherwise. Does nothing when the import already works.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

GUARD = "torchvision.extension._has_ops()"
DECORATOR = re.compile(r'^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$', re.M)


def imports_cleanly() -> tuple[bool, str]:
    proc = subprocess.run(
        [sys.executable, "-c", "import torchvision"], capture_output=True, text=True
    )
    return proc.returncode == 0, proc.stderr


def guarded(text: str) -> str:
    """The module text with both nms/qnms fake registrations made conditional."""
    new, count = DECORATOR.subn(
        lambda m: f'@(torch.library.register_fake("torchvision::{m.group(1)}") '
        f"if {GUARD} else (lambda fn: fn))",
        text,
    )
    if count != 2:
        raise SystemExit(f"patch_torchvision: expected 2 nms/qnms registrations, found {count}")
    if "import torchvision\n" not in new:
        new = new.replace("import torch\n", "import torch\nimport torchvision\n", 1)
    return new


def main() -> int:
    ok, err = imports_cleanly()
    if ok:
        print("patch_torchvision: torchvision imports; nothing to do")
        return 0
    if "torchvision::nms" not in err:
        print(f"patch_torchvision: import torchvision fails for another reason:\n{err}")
        return 1
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("patch_torchvision: torchvision is not installed")
        return 1
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if DECORATOR.search(text):
        path.write_text(guarded(text))
        print(f"patch_torchvision: guarded the nms/qnms fake kernels in {path}")
    ok, err = imports_cleanly()
    if not ok:
        print(f"patch_torchvision: torchvision still does not import:\n{err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
