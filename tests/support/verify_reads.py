"""Bytes the product reads to verify model files, counted by a spy in the tests (the
product carries no hook): the ``verify_reads`` fixture (tests/conftest.py) wraps the
``open`` that :mod:`comfy_worker.sync.verify` uses, so a test can prove that a warm start
reads nothing."""

from __future__ import annotations


class VerifyReads:
    """Bytes the verify module reads from files, counted by wrapping its ``open`` (a spy
    in the test, no hook in the product)."""

    def __init__(self) -> None:
        self.value = 0

    def open(self, path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        return _CountingFile(open(path, mode, *args, **kwargs), self)  # type: ignore[call-overload]


class _CountingFile:
    def __init__(self, fh: object, counter: VerifyReads) -> None:
        self._fh, self._counter = fh, counter

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()  # type: ignore[attr-defined]

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)  # type: ignore[attr-defined]
        self._counter.value += len(data)
        return data

    def readinto(self, buf: bytearray) -> int:
        n = self._fh.readinto(buf)  # type: ignore[attr-defined]
        self._counter.value += n or 0
        return n

