"""Where receiving lanes put pages: a file written with pwrite (holes punched for zero pages) or a buffer."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ldoms.migration import sink as sink_mod
from ldoms.migration.dataplane_errors import DataPlaneError
from ldoms.migration.sink import BufferSink, FileSink, NoSpace
from ldoms.units import PAGE_SIZE

PAGES = 64


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "ldg1.mem"
    with open(path, "wb") as f:
        f.truncate(PAGES * PAGE_SIZE)
    return path


def test_a_file_sink_writes_pages_where_they_belong(image: Path) -> None:
    s = FileSink(str(image), PAGES * PAGE_SIZE)
    s.write(3, b"a" * PAGE_SIZE + b"b" * PAGE_SIZE)
    s.close()
    s.close()  # twice is harmless
    data = image.read_bytes()
    assert data[3 * PAGE_SIZE : 5 * PAGE_SIZE] == b"a" * PAGE_SIZE + b"b" * PAGE_SIZE
    assert (
        data[: 3 * PAGE_SIZE] == bytes(3 * PAGE_SIZE)
        and data[5 * PAGE_SIZE :].count(0) == len(data) - 5 * PAGE_SIZE
    )


def test_a_file_sink_honours_its_offset(image: Path) -> None:
    s = FileSink(str(image), 8 * PAGE_SIZE, offset=16 * PAGE_SIZE)
    s.write(1, b"x" * PAGE_SIZE)
    s.close()
    assert image.read_bytes()[17 * PAGE_SIZE : 18 * PAGE_SIZE] == b"x" * PAGE_SIZE


def test_zero_pages_become_holes(image: Path) -> None:
    s = FileSink(str(image), PAGES * PAGE_SIZE)
    s.write(0, os.urandom(PAGES * PAGE_SIZE))
    full = image.stat().st_blocks
    s.zero(8, 32)
    s.close()
    data = image.read_bytes()
    assert data[8 * PAGE_SIZE : 40 * PAGE_SIZE] == bytes(32 * PAGE_SIZE)
    assert data[: 8 * PAGE_SIZE].count(0) < 8 * PAGE_SIZE  # the rest is untouched
    assert image.stat().st_blocks < full  # the zeroed pages' blocks were freed


def test_zeroing_where_holes_are_not_supported_writes_zeros(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported() -> Any:
        def punch(fd: int, mode: int, off: int, length: int) -> int:
            ctypes.set_errno(errno.EOPNOTSUPP)
            return -1

        return punch

    monkeypatch.setattr(sink_mod, "_fallocate", unsupported)
    s = FileSink(str(image), PAGES * PAGE_SIZE)
    s.write(0, b"\xff" * (PAGES * PAGE_SIZE))
    s.zero(2, 3)
    s.close()
    data = image.read_bytes()
    assert data[2 * PAGE_SIZE : 5 * PAGE_SIZE] == bytes(3 * PAGE_SIZE)
    assert data[5 * PAGE_SIZE : 6 * PAGE_SIZE] == b"\xff" * PAGE_SIZE


def test_a_failing_punch_is_an_error(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing() -> Any:
        def punch(fd: int, mode: int, off: int, length: int) -> int:
            ctypes.set_errno(errno.EIO)
            return -1

        return punch

    monkeypatch.setattr(sink_mod, "_fallocate", failing)
    s = FileSink(str(image), PAGES * PAGE_SIZE)
    with pytest.raises(DataPlaneError, match=f"writing the image {image} failed: input/output error"):
        s.zero(0, 1)
    s.close()


def test_a_full_filesystem_is_no_space(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: Any, off: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sink_mod.os, "pwrite", full)
    s = FileSink(str(image), PAGES * PAGE_SIZE)
    with pytest.raises(NoSpace, match=f"{image}: no space left on device") as e:
        s.write(0, b"a" * PAGE_SIZE)
    assert e.value.code == "no-space"
    s.close()


def test_other_write_errors_are_named(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, data: Any, off: int) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sink_mod.os, "pwrite", broken)
    s = FileSink(str(image), PAGES * PAGE_SIZE)
    with pytest.raises(DataPlaneError, match="failed: input/output error") as e:
        s.write(0, b"a" * PAGE_SIZE)
    assert not isinstance(e.value, NoSpace)
    s.close()


def test_short_writes_are_resumed(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite

    def short(fd: int, data: Any, off: int) -> int:
        return real(fd, memoryview(data)[:100], off)

    monkeypatch.setattr(sink_mod.os, "pwrite", short)
    s = FileSink(str(image), PAGES * PAGE_SIZE)
    payload = os.urandom(2 * PAGE_SIZE)
    s.write(4, payload)
    s.close()
    assert image.read_bytes()[4 * PAGE_SIZE : 6 * PAGE_SIZE] == payload


def test_a_buffer_sink_writes_and_zeroes() -> None:
    mem = bytearray(b"\x01" * (8 * PAGE_SIZE))
    s = BufferSink(mem)
    s.write(1, b"z" * PAGE_SIZE)
    s.zero(4, 2)
    s.zero(4, 2)  # already zero: nothing to do
    s.close()
    assert mem[PAGE_SIZE : 2 * PAGE_SIZE] == b"z" * PAGE_SIZE
    assert mem[4 * PAGE_SIZE : 6 * PAGE_SIZE] == bytes(2 * PAGE_SIZE)
    assert np.frombuffer(mem, dtype=np.uint8)[6 * PAGE_SIZE :].min() == 1
