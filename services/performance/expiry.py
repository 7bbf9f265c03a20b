"""What happens to a partition when event time passes a report boundary.

- :meth:`BoundaryWork.expire`: join entries whose deadline passed leave the join store: a
  prediction without a label counts as expired (unlabeled) and becomes a tombstone for
  ``late_label_memory``; an early label that found no prediction is dead-lettered as orphan;
- :meth:`BoundaryWork.release`: samples, corrections and interval counters with event time
  at or before the boundary are applied to the cumulative counters, in a fixed order, so
  float sums are the same whatever the consumer's batches were;
- :meth:`BoundaryWork.prune`: samples and interval counters no window can reach are dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.performance.join import JoinParts
from services.performance.partitions import PartitionView
from services.performance.quality import SampleTerms, sample_terms
from services.performance.state_layout import (
    CORRECTION_PREFIX,
    CORRECTION_SAMPLE,
    EARLY_LABEL,
    EXPIRED,
    PENDING,
    SAMPLE_MODEL,
    SAMPLE_PREFIX,
    TOMBSTONE,
    Entry,
    Group,
    ModelRoute,
    Sample,
    model_id_of,
)
from streamml.processor import Output

ReleasedSample = tuple[PartitionView, bytes, Sample]


@dataclass
class Released:
    """What one boundary released, for the sliding windows of its reports."""

    # Samples released, per model route (all partitions), in release order.
    samples: dict[ModelRoute, list[ReleasedSample]] = field(default_factory=dict)
    # Model routes whose window content changed (samples released or labels corrected).
    changed: set[ModelRoute] = field(default_factory=set)
    # Model routes with a label corrected: their cached window must be rebuilt.
    relabelled: set[ModelRoute] = field(default_factory=set)
    # Corrections applied, in order: (sample key, new label), for the merge stage.
    corrections: list[tuple[bytes, int]] = field(default_factory=list)


class BoundaryWork:
    """Expires join entries and releases contributions into cumulative counters."""

    def __init__(self, parts: JoinParts) -> None:
        self._layout = parts.layout
        self._rules = parts.rules
        self._stores = parts.stores
        self._catalog = parts.catalog
        self._dead_letters = parts.dead_letters
        self._metrics = parts.metrics
        self._interval = parts.rules.report_interval

    # -- expiry -----------------------------------------------------------------------

    def expire(self, view: PartitionView, k: int, end: int, outputs: list[Output]) -> None:
        """Entries listed for boundary ``k`` (at ``end``) whose deadline passed."""
        digests = view.expiry.pop(k, None)
        if not digests:
            return
        p = view.partition
        join = self._stores.join
        for digest in digests:
            raw = join.get(p, digest)
            if raw is None:
                continue
            entry = self._layout.unpack_entry(raw)
            deadline = self._rules.deadline(entry.kind, entry.time)
            if deadline > end:
                # A stale index entry (an early label that was joined since): every change
                # of an entry's deadline indexes it again, so its current one is listed.
                continue
            if entry.kind == EARLY_LABEL:
                self._dead_letters.orphan(entry, "no prediction within early_label_grace",
                                          outputs)  # fmt: skip
                join.delete(p, digest)
                continue
            if entry.kind == PENDING:
                self._count_unlabeled(view, entry, deadline)
                tomb = deadline + self._rules.late_label_memory
                if tomb > end:
                    join.put(p, digest, self._layout.pack_entry(Entry(TOMBSTONE, tomb)))
                    view.index_expiry(digest, tomb)
                    continue
            join.delete(p, digest)

    def _count_unlabeled(self, view: PartitionView, entry: Entry, deadline: int) -> None:
        if entry.labels:
            return
        for model_id, _, _, segments in entry.predictions:
            view.count(deadline, self._catalog.groups(model_id, segments), EXPIRED)
        self._metrics.on_event("expired_unlabeled")

    # -- release ----------------------------------------------------------------------

    def release(self, view: PartitionView, end: int, released: Released) -> None:
        """Apply every contribution with event time <= end to the cumulative counters."""
        self._release_samples(view, self._due_samples(view, end), released)
        self._release_corrections(view, end, released)
        bucket = view.buckets.get(end // self._interval)
        if bucket:
            for group, (predictions, expired, corrections) in sorted(bucket.items()):
                c = view.cumulative_of(group)
                c.predictions += predictions
                c.expired += expired
                c.corrections += corrections
                c.seen(end - self._interval + 1)

    def _due_samples(self, view: PartitionView, end: int) -> list[bytes]:
        """Keys of the unreleased samples with time <= end, in key order."""
        last_k = end // self._interval
        due_ks = [k for k in view.release_index if k <= last_k]
        candidates: set[bytes] = set()
        for k in due_ks:
            candidates.update(view.release_index.pop(k))
        samples, unreleased = view.samples, view.unreleased
        due_keys = []
        for key in candidates:
            if key in unreleased:
                if samples[key].ts <= end:
                    due_keys.append(key)
                else:  # not expected (a sample's time never changes); keep it indexed
                    view.index_release(key, samples[key].ts)
        due_keys.sort()
        return due_keys

    def _release_samples(self, view: PartitionView, keys: list[bytes], released: Released) -> None:
        samples, unreleased = view.samples, view.unreleased
        models: dict[bytes, tuple[int, list[ReleasedSample]]] = {}
        by_time: dict[bytes, list[tuple[int, bytes]]] = {}
        by_group: dict[Group, list[SampleTerms]] = {}
        for key in keys:
            unreleased.discard(key)
            s = samples[key]
            model_key = key[SAMPLE_MODEL]
            found = models.get(model_key)
            if found is None:
                model_id = model_id_of(key)
                model = view.model_route(model_id)
                released.changed.add(model)
                found = models[model_key] = (model_id, released.samples.setdefault(model, []))
            model_id, fresh = found
            fresh.append((view, key, s))
            by_time.setdefault(model_key, []).append((s.ts, key))
            # Per group the same additions, in the same (key) order, as add_labeled(score,
            # decision, label, 1, delay) + seen(ts) per sample, with the terms computed once.
            terms = sample_terms(s.score, s.decision, s.label, s.delay, s.ts)
            for group in self._catalog.groups(model_id, s.segments):
                group_terms = by_group.get(group)
                if group_terms is None:
                    by_group[group] = [terms]
                else:
                    group_terms.append(terms)
        for group, group_terms in by_group.items():
            view.cumulative_of(group).add_samples(group_terms)
        for model_key, items in by_time.items():
            # Later than every sample released before (their times are past the last boundary).
            items.sort()
            queue = view.released.get(model_key)
            if queue is None:
                view.released[model_key] = deque(items)
            else:
                queue.extend(items)

    def _release_corrections(self, view: PartitionView, end: int, released: Released) -> None:
        due = sorted((c.ts, k) for k, c in view.corrections.items() if c.ts <= end)
        for _, fix_key in due:
            fix = view.corrections.pop(fix_key)
            self._stores.metrics.delete(view.partition, CORRECTION_PREFIX + fix_key)
            key = fix_key[CORRECTION_SAMPLE]
            model_id = model_id_of(key)
            model = view.model_route(model_id)
            released.changed.add(model)
            released.relabelled.add(model)
            released.corrections.append((key, fix.new))
            sample = view.samples.get(key)
            # A correction is never earlier than its sample, so the sample is counted already;
            # when it has left the window, ``old`` is what cumulative holds for it.
            counted = fix.old
            if sample is not None:
                counted = sample.label
                sample.label = fix.new
                self._stores.metrics.put(view.partition, SAMPLE_PREFIX + key,
                                         self._layout.pack_sample(sample))  # fmt: skip
            if counted != fix.new:
                for group in self._catalog.groups(model_id, fix.segments):
                    c = view.cumulative_of(group)
                    c.add_labeled(fix.score, fix.decision, counted, -1)
                    c.add_labeled(fix.score, fix.decision, fix.new, 1)

    # -- pruning ----------------------------------------------------------------------

    def prune(
        self, views: Sequence[PartitionView], end: int, window_starts: Mapping[ModelRoute, int]
    ) -> None:
        """Forget samples and interval counters no window can reach any more.

        A count window starts where its model route's last ``window_size`` samples begin,
        so each route's interval counters are cut at its own start: a route that fills
        slowly (a small canary share) must not hold back every other route's counters."""
        if self._rules.count_window:
            for v in views:
                self._prune_samples(v, end)
                starts = {
                    model_id: window_starts.get(v.model_route(model_id), end) // self._interval
                    for model_id in {group[0] for bucket in v.buckets.values() for group in bucket}
                }
                self._prune_route_buckets(v, starts)
            return
        cutoff = end - self._rules.window_duration
        for v in views:
            self._prune_samples(v, end)
            self._prune_buckets(v, cutoff // self._interval)

    def forget_sent(self, view: PartitionView, end: int) -> None:
        """Stage 1 of the merge: after the partial of the boundary at ``end`` was built,
        keep the samples a later correction may relabel; the interval counters up to it
        are in the partials."""
        self._prune_samples(view, end)
        self._prune_buckets(view, end // self._interval + 1)

    def _prune_samples(self, v: PartitionView, end: int) -> None:
        # The oldest released samples of each model route, beyond the window's size
        # (count) or at or before its start (time).
        count_window = self._rules.count_window
        cutoff = end - self._rules.window_duration
        size = self._rules.window_size
        doomed = []
        for queue in v.released.values():
            if count_window:
                while len(queue) > size:
                    doomed.append(queue.popleft()[1])
            else:
                while queue and queue[0][0] <= cutoff:
                    doomed.append(queue.popleft()[1])
        for key in doomed:
            del v.samples[key]
            self._stores.metrics.delete(v.partition, SAMPLE_PREFIX + key)

    @staticmethod
    def _prune_buckets(v: PartitionView, before_k: int) -> None:
        for k in [k for k in v.buckets if k < before_k]:
            for group in v.buckets.pop(k):
                v.dirty_buckets.add((k, group))

    @staticmethod
    def _prune_route_buckets(v: PartitionView, before_k: Mapping[int, int]) -> None:
        """Drop each group's counters of intervals before its model route's window."""
        for k in list(v.buckets):
            bucket = v.buckets[k]
            for group in [g for g in bucket if k < before_k[g[0]]]:
                del bucket[group]
                v.dirty_buckets.add((k, group))
            if not bucket:
                del v.buckets[k]
