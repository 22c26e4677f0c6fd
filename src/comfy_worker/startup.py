"""Start-up steps side by side (the model sync and ComfyUI's boot): each in its own
thread, done when all are, failed as soon as one fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping


def run_side_by_side(steps: Mapping[str, Callable[[], None]], *,
                     waiting: Callable[[set[str]], None],
                     timings: dict[str, float] | None = None) -> None:
    """Run each step in its own thread; return when all are done, or raise the first
    failure as soon as it happens (the others are left to the caller's cleanup).
    ``waiting(names)`` is told the steps still running each time one ends; ``timings``
    gets each step's seconds since the call, as ``NAME_s``."""
    t0 = time.perf_counter()
    errors: list[BaseException] = []
    finished: set[str] = set()
    done = threading.Condition()

    def run(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            if timings is not None:
                timings[f"{name}_s"] = time.perf_counter() - t0
        except BaseException as exc:
            errors.append(exc)
        finally:
            with done:
                finished.add(name)
                done.notify_all()

    for name, fn in steps.items():
        threading.Thread(target=run, args=(name, fn), name=f"worker-{name}",
                         daemon=True).start()
    with done:
        while len(finished) < len(steps) and not errors:
            done.wait()
            if not errors:
                waiting(set(steps) - finished)
    if errors:
        raise errors[0]


def waiting_for(steps: set[str]) -> str:
    """The readiness reason while ``steps`` still run."""
    if steps == {"boot"}:
        return "starting ComfyUI"
    if steps == {"sync"}:
        return "syncing models"
    return "syncing models and starting ComfyUI"
