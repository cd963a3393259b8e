"""The inflated view of a gzip file: verified, capped while it inflates, and seekable in bounded time.

:class:`InflatedStream` is the file object the archive reader hands to :mod:`tarfile`. It inflates the gzip
members of the file one after another with zlib, which checks each member's CRC32 and ISIZE trailer; after the
last member only NUL padding may follow. As it inflates for the first time it counts the compressed bytes consumed
and the bytes inflated, and refuses the stream at once when the inflated count passes ``max_compression_ratio``
times the compressed count plus ``ratio_floor_bytes``, or ``max_total_bytes + max_overhead_bytes``: a bomb costs
about ``ratio_floor_bytes`` of inflation, never its full size.

The stream is cut into 64 KiB blocks. The first pass records each block's CRC32; it also keeps a copy of the zlib
state (a checkpoint, about 40 KB) every ``interval`` bytes, at most :data:`MAX_CHECKPOINTS` of them (the interval
doubles when they would be more). Reading at an earlier offset restarts from the nearest checkpoint, so one access
costs at most ``interval`` bytes of inflation plus what it reads, never a rewind to the start. Blocks inflated again
are compared with the recorded CRC32 before any byte of them is served: a file changed on disk after the first pass
is refused rather than read.
"""

from __future__ import annotations

import io
import os
import zlib
from array import array
from bisect import bisect_right
from typing import BinaryIO, NamedTuple

from servicemaker.eff.limits import KiB, Limits
from servicemaker.errors import first_line
from servicemaker.errors import ArchiveError, UnsafeArchiveError

BLOCK = 64 * KiB
IN_CHUNK = 64 * KiB
MAX_CHECKPOINTS = 512
GZIP_MAGIC = b"\x1f\x8b"
_GZIP = 16 + zlib.MAX_WBITS
_DAMAGED = "the file is damaged: compare its size/sha256 with the source, or download/copy it again"


class _Checkpoint(NamedTuple):
    pos: int                          # inflated offset, a multiple of the interval
    in_off: int                       # file offset of the first compressed byte zlib has not consumed
    state: object | None              # a zlib decompressor copy; None at a gzip member boundary


class InflatedStream(io.RawIOBase):
    """A read-only, seekable file object over the inflated concatenation of a gzip file's members."""

    def __init__(self, fh: BinaryIO, where: str, limits: Limits) -> None:
        super().__init__()
        self.where = where
        self.limits = limits
        self._fd = fh.fileno()
        self.compressed_size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, 2, 0)
        if head != GZIP_MAGIC:
            what = "the file is empty" if not head else "no gzip header"
            raise ArchiveError(f"{where}: not an EFF archive (not a gzip-compressed tar: {what})",
                               hint="give a .riva/.rmir/.eff file written by nemo2riva, TAO or svc-build")
        #: inflated size, known once the end of the stream was reached (and every trailer verified)
        self.size: int | None = None
        #: bytes inflated so far, inflating again after a seek included (a measure of the work done)
        self.inflated = 0
        self._pos = 0
        self._produced = 0            # the inflated offset the zlib state stands at
        self._high = 0                # the furthest inflated offset reached
        self._dec = None              # the current member's decompressor; None at a member boundary
        self._in = b""                # compressed bytes not yet consumed
        self._in_off = 0              # file offset of self._in[0]
        self._crcs = array("I")       # CRC32 of every block, recorded on the first pass
        self._block: tuple[int, bytes] | None = None
        self._interval = BLOCK
        self._cps = [_Checkpoint(0, 0, None)]
        self._cp_pos = [0]

    # -- file object ---------------------------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self._pos
        elif whence == io.SEEK_END:
            pos += self.finish()
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, n: int | None = -1) -> bytes:
        parts = []
        got = 0
        want = None if n is None or n < 0 else n
        while want is None or got < want:
            index, offset = divmod(self._pos, BLOCK)
            block = self._get_block(index)
            end = len(block) if want is None else min(len(block), offset + want - got)
            if end <= offset:
                break
            parts.append(memoryview(block)[offset:end])
            got += end - offset
            self._pos += end - offset
        return b"".join(parts)

    def finish(self) -> int:
        """Inflate to the end of the stream (verifying every gzip trailer); return the inflated size."""
        while self.size is None:
            self._get_block(self._high // BLOCK)
        return self.size

    def close(self) -> None:
        self._cps = []
        self._cp_pos = []
        self._dec = None
        self._block = None
        super().close()

    # -- blocks and checkpoints ----------------------------------------------------------------------------------

    def _get_block(self, index: int) -> bytes:
        if self._block is not None and self._block[0] == index:
            return self._block[1]
        target = index * BLOCK
        if self.size is not None and target >= self.size:
            return b""
        if target != self._produced:
            cp = self._cps[bisect_right(self._cp_pos, target) - 1]
            if target < self._produced or cp.pos > self._produced:
                self._restore(cp)
            while self._produced < target:
                if not self._inflate_block():
                    return b""
        data = self._inflate_block()
        self._block = (index, data)
        return data

    def _restore(self, cp: _Checkpoint) -> None:
        self._produced = cp.pos
        self._dec = cp.state.copy() if cp.state is not None else None  # type: ignore[attr-defined]
        self._in = b""
        self._in_off = cp.in_off
        self._block = None

    def _inflate_block(self) -> bytes:
        """Inflate the block at ``self._produced`` (block-aligned); record its CRC32 or check it."""
        start = self._produced
        index = start // BLOCK
        parts = []
        crc = got = 0
        while got < BLOCK:
            piece = self._inflate_some(BLOCK - got)
            if piece is None:
                break
            parts.append(piece)
            got += len(piece)
            crc = zlib.crc32(piece, crc)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        if index < len(self._crcs):
            expected_len = BLOCK if self.size is None else min(BLOCK, self.size - start)
            if crc != self._crcs[index] or len(out) != expected_len:
                raise ArchiveError(f"{self.where}: the file changed while it was being read",
                                   hint="do not modify an archive while servicemaker reads it")
        elif self.size is not None and len(out) and start >= self.size:
            raise ArchiveError(f"{self.where}: the file changed while it was being read")
        elif len(out) == BLOCK or self.size is not None:
            self._crcs.append(crc)
            if len(out) == BLOCK and self._produced % self._interval == 0:
                self._checkpoint()
        return out

    def _checkpoint(self) -> None:
        if self._produced <= self._cp_pos[-1]:
            return
        state = self._dec.copy() if self._dec is not None else None
        self._cps.append(_Checkpoint(self._produced, self._in_off, state))
        self._cp_pos.append(self._produced)
        if len(self._cps) > MAX_CHECKPOINTS:
            self._interval *= 2
            self._cps = [c for c in self._cps if c.pos % self._interval == 0]
            self._cp_pos = [c.pos for c in self._cps]

    # -- inflating -------------------------------------------------------------------------------------------------

    def _raw(self, n: int) -> bytes:
        return os.pread(self._fd, n, self._in_off + len(self._in))

    def _inflate_some(self, max_len: int) -> bytes | None:
        """Up to ``max_len`` (> 0) inflated bytes; ``None`` at the (verified) end of the stream."""
        while True:
            if self._dec is None and not self._begin_member():
                return None
            if not self._in:
                self._in = self._raw(IN_CHUNK)
                if not self._in:
                    raise ArchiveError(f"{self.where}: truncated: the gzip stream ends before its end marker",
                                       hint=_DAMAGED)
            try:
                out = self._dec.decompress(self._in, max_len)
            except zlib.error as err:
                raise self._corrupt(err) from None
            if self._dec.eof:
                rest = self._dec.unused_data
                self._dec = None
            else:
                rest = self._dec.unconsumed_tail
            self._in_off += len(self._in) - len(rest)
            self._in = rest
            if out:
                self.inflated += len(out)
                self._produced += len(out)
                if self._produced > self._high:
                    self._grow()
                return out

    def _begin_member(self) -> bool:
        """At a member boundary: start the next gzip member, or reach the end of the stream (False)."""
        if len(self._in) < 2:
            self._in += self._raw(IN_CHUNK)
        if self._in_off > 0:
            if not self._in:
                return self._end()
            if self._in[0] == 0:
                self._check_padding()
                return self._end()
            if not self._in.startswith(GZIP_MAGIC):
                raise ArchiveError(f"{self.where}: {self.compressed_size - self._in_off} bytes of trailing data "
                                   f"after the end of the gzip stream (at offset {self._in_off})", hint=_DAMAGED)
        self._dec = zlib.decompressobj(_GZIP)
        return True

    def _check_padding(self) -> None:
        off = self._in_off
        while off < self.compressed_size:
            chunk = os.pread(self._fd, 1 << 20, off)
            if not chunk:
                break
            if chunk.count(0) != len(chunk):
                raise ArchiveError(f"{self.where}: trailing data after the end of the gzip stream "
                                   f"(at offset {off + len(chunk) - len(chunk.lstrip(bytes(1)))})", hint=_DAMAGED)
            off += len(chunk)
        self._in_off, self._in = off, b""

    def _end(self) -> bool:
        if self.size is None:
            self.size = self._produced
        elif self._produced != self.size:
            raise ArchiveError(f"{self.where}: the file changed while it was being read")
        return False

    def _grow(self) -> None:
        """The first pass reached a new offset: apply the caps."""
        self._high = self._produced
        lim = self.limits
        cap = lim.max_total_bytes + lim.max_overhead_bytes
        if self._high > cap:
            raise UnsafeArchiveError(f"{self.where}: inflates to more than {cap} bytes (the limit for an archive's "
                                     "members plus their headers): refusing it")
        if self._high > lim.max_compression_ratio * self._in_off + lim.ratio_floor_bytes:
            raise UnsafeArchiveError(f"{self.where}: its first {self._in_off} compressed bytes inflate to more than "
                                     f"{self._high} bytes (limit {lim.max_compression_ratio:.0f}x plus "
                                     f"{lim.ratio_floor_bytes} bytes): refusing a likely decompression bomb")

    def _corrupt(self, err: zlib.error) -> ArchiveError:
        text = str(err)
        if "incorrect data check" in text:
            what = "the gzip CRC32 check failed: the archive is corrupt"
        elif "incorrect length check" in text:
            what = "the gzip size check (ISIZE) failed: the archive is corrupt"
        elif self._high == 0 and self._in_off == 0:
            what = f"not an EFF archive (not a gzip-compressed tar: {first_line(text.split(': ', 1)[-1])})"
        else:
            what = f"the compressed data is corrupt ({first_line(text)})"
        return ArchiveError(f"{self.where}: {what}", hint=_DAMAGED)
