"""The samples of one model route's sliding window, as numpy columns."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

# A window tuple: (ts, digest, score, decision, label, delay, segment value names).
WindowTuple = tuple[Any, ...]
BY_TIME = operator.itemgetter(0, 1)  # window tuples in (time, digest) order


class SlidingWindow:
    """A sliding window's samples in (time, digest) order, as numpy columns: samples are
    added at the end (in that order) and dropped at the front. A segment value's samples
    are picked with a mask, so they keep the window's order."""

    __slots__ = ("codes", "decision", "delay", "label", "score", "segments", "ts")

    def __init__(self, fields: int) -> None:
        self.ts = np.empty(0, dtype=np.int64)
        self.score = np.empty(0, dtype=np.float64)
        self.decision = np.empty(0, dtype=bool)
        self.label = np.empty(0, dtype=np.int64)
        self.delay = np.empty(0, dtype=np.float64)
        self.segments = np.empty((fields, 0), dtype=np.int32)
        # Per segment field: reported value name -> its code in ``segments``.
        self.codes: list[dict[str, int]] = [{} for _ in range(fields)]

    def __len__(self) -> int:
        return len(self.ts)

    def extend(self, samples: Sequence[tuple[Any, ...]]) -> None:
        """Append window tuples ``(ts, digest, score, decision, label, delay, segments)``."""
        if not samples:
            return
        ts, _, scores, decisions, labels, delays, segs = zip(*samples, strict=True)
        self.ts = np.concatenate((self.ts, np.asarray(ts, dtype=np.int64)))
        self.score = np.concatenate((self.score, np.asarray(scores, dtype=np.float64)))
        self.decision = np.concatenate((self.decision, np.asarray(decisions, dtype=bool)))
        self.label = np.concatenate((self.label, np.asarray(labels, dtype=np.int64)))
        self.delay = np.concatenate((self.delay, np.asarray(delays, dtype=np.float64)))
        columns = []
        for index, codes in enumerate(self.codes):
            column = []
            for names in segs:
                code = codes.get(names[index])
                if code is None:
                    code = codes[names[index]] = len(codes)
                column.append(code)
            columns.append(column)
        added = np.asarray(columns, dtype=np.int32).reshape(len(self.codes), len(samples))
        self.segments = np.concatenate((self.segments, added), axis=1)

    def _drop_first(self, count: int) -> None:
        if count > 0:
            self.ts, self.score = self.ts[count:], self.score[count:]
            self.decision, self.label = self.decision[count:], self.label[count:]
            self.delay, self.segments = self.delay[count:], self.segments[:, count:]

    def keep_last(self, size: int) -> None:
        self._drop_first(len(self.ts) - size)

    def drop_until_after(self, lower: int) -> None:
        self._drop_first(int(np.searchsorted(self.ts, lower, side="right")))

    def columns(
        self, index: int | None = None, value: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Scores, labels, decisions and delays of the window, or of one segment value."""
        if index is None:
            return self.score, self.label, self.decision, self.delay
        code = self.codes[index].get(value) if value is not None else None
        if code is None:
            empty = np.empty(0, dtype=np.float64)
            return empty, np.empty(0, dtype=np.int64), np.empty(0, dtype=bool), empty
        mask = self.segments[index] == code
        return self.score[mask], self.label[mask], self.decision[mask], self.delay[mask]
