"""Child process: one ``hf_transfer.download`` (run as a script, not imported).

``hf_transfer.download`` holds the GIL for the whole download, which would stall every
other thread of the worker (other files, hashing, the progress bar, ComfyUI's boot
watcher). So each download runs here, in its own process. The spec (URL, headers with
the token, file name, tuning) arrives as JSON on stdin, never on the command line.
stdout carries one line per event: ``<bytes>`` per finished chunk, then ``done`` or
``error <json string>``.
"""

import json
import os
import sys


def _die_with_parent(parent: int) -> None:
    """Linux: get SIGKILL when the worker dies, so no orphan keeps downloading."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _tune_malloc() -> None:
    """glibc: keep hf_transfer's large network buffers in the heap instead of a fresh
    mmap per buffer. Measured: about half the system time per GiB (fewer page faults),
    which on a busy machine leaves that CPU to hashing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mib = 1024 * 1024
        libc.mallopt(-3, 64 * mib)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 * mib)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 64 * mib)   # M_TOP_PAD
    except (OSError, AttributeError):
        pass


def main() -> int:
    spec = json.loads(sys.stdin.read())
    _die_with_parent(int(spec.get("parent", os.getppid())))
    _tune_malloc()
    import hf_transfer

    out = sys.stdout

    def on_chunk(n: int) -> None:
        out.write(f"{int(n)}\n")
        out.flush()

    try:
        hf_transfer.download(
            spec["url"], spec["filename"], max_files=spec["max_files"],
            chunk_size=spec["chunk_size"], parallel_failures=spec["parallel_failures"],
            max_retries=spec["max_retries"], headers=spec["headers"] or None,
            callback=on_chunk,
        )
    except Exception as exc:  # hf_transfer raises plain Exception with a message
        out.write("error " + json.dumps(str(exc)) + "\n")
        out.flush()
        return 1
    out.write("done\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
