"""Where a receiving lane puts the pages it authenticated: the target's memory.

Theory of operation.  Two sinks behind one interface (`write`, `zero`, `close`):

* `FileSink` writes an image file with `pwrite`.  That is the target's normal case (the memory file the
  guest will map): on tmpfs a full-page `pwrite` allocates the page without zeroing it first and without
  mapping it into ldmd, where a store through a shared mapping takes a page fault that zeroes and maps
  each fresh page (bench/bench_dataplane.py and DESIGN §5: about twice the cost per GiB), and where the
  pages had to be reserved (`posix_fallocate`) and pre-touched before PrepareAck to make that fault cheap
  and a full disk safe.  With `pwrite` nothing is reserved ahead: a full filesystem is an `ENOSPC` error of
  the write (`NoSpace`, which the target names as "no room for the memory image"), never a SIGBUS.
  A page that became zero on the source is a punched hole (`FALLOC_FL_PUNCH_HOLE`): it reads as zeros,
  frees its block, and costs nothing where the page was never written.
* `BufferSink` stores into a writable buffer (tests, and memory that is not a file).  Writing zeros over a
  page that already reads as zeros is skipped: on tmpfs it would allocate the page.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from typing import Any, Protocol

from ldoms.migration import dataplane_errors as errs
from ldoms.migration.dataplane_errors import NoSpace
from ldoms.migration.pagescan import as_pages
from ldoms.units import PAGE_SIZE

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_ZEROS = bytes(1 << 20)


class PageSink(Protocol):
    def write(self, first_page: int, data: Any) -> None: ...
    def zero(self, first_page: int, count: int) -> None: ...
    def close(self) -> None: ...


class BufferSink:
    def __init__(self, memory: Any) -> None:
        self.raw = memoryview(memory).cast("B")
        self.pages = as_pages(memory)

    def write(self, first_page: int, data: Any) -> None:
        off = first_page * PAGE_SIZE
        self.raw[off : off + len(data)] = data

    def zero(self, first_page: int, count: int) -> None:
        region = self.pages[first_page : first_page + count]
        if region.any():
            region[:] = 0

    def close(self) -> None:
        self.raw.release()
        del self.pages


def _fallocate() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    fn.restype = ctypes.c_int
    return fn


class FileSink:
    """`size` bytes of the file at `path`, from `offset`, written with pwrite."""

    def __init__(self, path: str, size: int, offset: int = 0) -> None:
        self.path = path
        self.size = size
        self.offset = offset
        self.fd = os.open(path, os.O_RDWR)
        self._punch: Any = None

    def write(self, first_page: int, data: Any) -> None:
        view = memoryview(data).cast("B")
        off = self.offset + first_page * PAGE_SIZE
        try:
            while len(view):
                n = os.pwrite(self.fd, view, off)
                view, off = view[n:], off + n
        except OSError as e:
            raise self._error(e) from None

    def zero(self, first_page: int, count: int) -> None:
        off, length = self.offset + first_page * PAGE_SIZE, count * PAGE_SIZE
        if self._punch is None:
            self._punch = _fallocate()
        if self._punch(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise self._error(OSError(err, os.strerror(err)))
        while length:  # a filesystem without holes: write the zeros
            n = min(length, len(_ZEROS))
            self.write((off - self.offset) // PAGE_SIZE, _ZEROS[:n])
            off, length = off + n, length - n

    def _error(self, e: OSError) -> errs.DataPlaneError:
        why = (e.strerror or str(e)).lower()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(f"{self.path}: {why}")
        return errs.DataPlaneError(f"writing the image {self.path} failed: {why}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
