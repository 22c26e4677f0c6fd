"""Make ``import torchaudio`` work when its compiled extension cannot load (CPU torch + PyPI).

torchaudio 2.11 is its last release and declares itself compatible with every later torch
(``torch>=2.11``). PyPI's wheels of it are the CUDA variant: their ``_torchaudio.so``
needs ``libc10_cuda.so``, so next to a CPU torch (the CPU image's 2.13.0+cpu) loading it
raises ``OSError`` and ``import torchaudio`` fails. ComfyUI v0.33.0 imports torchaudio at
start (``comfy/text_encoders/gemma4.py``) and uses only its Python functions (resample,
mel spectrograms, biquad filters), which need no extension: this makes the extension
optional, as torchaudio already treats a missing one (``_IS_TORCHAUDIO_EXT_AVAILABLE``
False: the few functions that need it, such as ``forced_align``, say so when called).

Run with the interpreter that has torchaudio installed. Exit 0 when torchaudio imports
(patched or not) and its resample runs, 1 otherwise. Does nothing when the import
already works (a CPU build of torchaudio, or CUDA torch beside it).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

LOAD = '_IS_TORCHAUDIO_EXT_AVAILABLE = _load_lib("_torchaudio")'
GUARDED = (
    "try:  # guarded by comfy-worker's scripts/image/patch_torchaudio.py\n"
    "    " + LOAD + "\n"
    "except OSError as _err:  # a CUDA build of the extension beside a CPU torch\n"
    "    _LG.debug(\"torchaudio's extension does not load: %s\", _err)\n"
    "    _IS_TORCHAUDIO_EXT_AVAILABLE = False"
)
SMOKE = ("import torch, torchaudio.functional as F; "
         "assert F.resample(torch.zeros(1, 160), 16000, 8000).shape == (1, 80)")


def imports_cleanly() -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-c", SMOKE], capture_output=True, text=True)
    return proc.returncode == 0, proc.stderr


def guarded(text: str) -> str:
    """The module text with the extension's load made optional."""
    if text.count(LOAD) != 1:
        raise SystemExit(f"patch_torchaudio: expected one line {LOAD!r}, found "
                         f"{text.count(LOAD)}")
    return text.replace(LOAD, GUARDED, 1)


def main() -> int:
    ok, err = imports_cleanly()
    if ok:
        print("patch_torchaudio: torchaudio imports; nothing to do")
        return 0
    if "Could not load this library" not in err and "_torchaudio" not in err:
        print(f"patch_torchaudio: import torchaudio fails for another reason:\n{err}")
        return 1
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or spec.origin is None:
        print("patch_torchaudio: torchaudio is not installed")
        return 1
    path = Path(spec.origin).parent / "_extension" / "__init__.py"
    text = path.read_text()
    if "patch_torchaudio.py" not in text:
        path.write_text(guarded(text))
        print(f"patch_torchaudio: made the extension optional in {path}")
    ok, err = imports_cleanly()
    if not ok:
        print(f"patch_torchaudio: torchaudio still does not work:\n{err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
