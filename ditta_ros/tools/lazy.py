"""Lazy, read-only sequences of frames: a long video is never decoded into memory at once.

Every source the evaluation reads (bags, VSPW folders, image folders, video files) exposes its
frames as a :class:`LazySequence`: ``len()``, integer indexing, slicing (a lazy view) and
iteration, decoding one item at a time. A small cache keeps the most recent items, because the
W2F runner reads the last warm-up frame again to prime its cache.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Iterator, Sequence, TypeVar, overload

T = TypeVar("T")


class LazySequence(Sequence[T], Generic[T]):
    """A sequence whose item ``i`` is ``load(i)``, computed on demand, last ``cache`` kept."""

    def __init__(self, length: int, load: Callable[[int], T], cache: int = 4) -> None:
        self._length = length
        self._load = load
        self._cache: OrderedDict[int, T] = OrderedDict()
        self._cache_size = cache

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> LazySequence[T]: ...

    def __getitem__(self, index: int | slice) -> T | LazySequence[T]:
        if isinstance(index, slice):
            picked = range(self._length)[index]
            return LazySequence(len(picked), lambda i: self[picked[i]], cache=0)
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} items")
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        item = self._load(index)
        if self._cache_size > 0:
            self._cache[index] = item
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return item

    def __iter__(self) -> Iterator[T]:
        for i in range(self._length):
            yield self[i]
