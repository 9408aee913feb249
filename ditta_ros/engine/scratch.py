"""Named work buffers for the band loops of the frame-size output stage.

A band of rows of one branch is C x rows x W floats (6.8 MB at 124 x 16 x 854): far above
the size from which the C library's allocator maps fresh pages from the kernel for every
request and returns them on release. Allocating such a band for each intermediate result
(upsampled rows, probabilities, p log p, the argmax marks) therefore costs a page fault per
4 KiB and the zeroing of every page, about as much as the arithmetic itself: measured on
one core, a 124 x 16 x 854 multiplication took 8.3 ms into a new tensor and 1.4 ms into an
existing one. :class:`Scratch` hands out views of buffers kept from frame to frame, so the
band loops run on memory that is already mapped.

Only public torch API is used. A view stays valid until the next :meth:`Scratch.take` of
the same name; the band loops take each name once per band and finish with a band before
the next one starts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Scratch:
    """Reusable contiguous work buffers, one per name, grown on demand and kept.

    :meth:`take` returns a contiguous view of the first ``prod(shape)`` elements of the
    named buffer; the buffer is replaced only when it is too small or of another dtype or
    device, so a stream of frames of one size allocates in its first frame only. Not
    thread-safe: one per output stage (stream).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], device: torch.device,
             dtype: torch.dtype = torch.float32) -> Tensor:
        """A contiguous tensor of ``shape`` (contents undefined) backed by buffer ``name``."""
        count = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < count or buf.dtype != dtype or buf.device != device:
            self._buffers.pop(name, None)                  # free the old one first
            buf = self._buffers[name] = torch.empty(count, dtype=dtype, device=device)
        return buf[:count].view(shape)

    def contiguous(self, name: str, x: Tensor) -> Tensor:
        """``x`` itself when contiguous, else a contiguous copy in buffer ``name``."""
        if x.is_contiguous():
            return x
        return self.take(name, tuple(x.shape), x.device, x.dtype).copy_(x)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def release(self) -> None:
        """Free every buffer; the next :meth:`take` allocates again."""
        self._buffers.clear()

