"""Whether the caches are worth asking: a moving share of cache hits, kept by probes.

Asking the caches costs a miss something: on the 10-field default model a single-row miss
took ~18 µs longer with the caches on than off, of ~106 µs a request (wrk, 16 connections),
and an all-miss 100-row batch ~50 µs of ~900 in process (the doorkeeper, the lookups, the
stores, and the memory they touch). A stream of one-off rows pays that on every request and
gains nothing. So the service keeps the share of hits among the requests that asked the
caches; while it is below ``min_share``, only one request in ``probe_every`` asks (a probe)
and the others go straight to the model, as if the caches were off. The probes keep the
share current: once rows start to repeat, a probe finds one stored by an earlier probe, the
share rises and every request asks again.

A probe still costs: on the 39-field NFFM in process a single-row miss took ~24 µs more when
every request probed than when none did (185 against 161 µs), so one probe in 8 cost a
one-off stream ~2% (127.0 µs a request against 124.3 with the caches off; one in 64: 124.8).
So each probe that finds nothing doubles the interval, up to ``probe_max``, and a probe that
finds a hit sets it back to ``probe_every``: a stream with no repeat at all pays for a probe
in 32, and the first repeat found brings back the quick pace. A 20-row hot set after 1,000
one-off rows was all cached within 12 rounds of it, against 6 without the backoff.
"""

from __future__ import annotations


class CacheGate:
    """A moving share of hits and the decision it gives, per request.

    Updated without a lock: the share is a hint, and an update lost to a thread that races
    it (a large batch scored in the thread pool) changes nothing that matters.

    Args:
        min_share: below this share of hits, only probes ask the caches.
        weight: one request's weight in the share (it follows about ``1 / weight``
            requests that asked).
        probe_every: while below, one request in this many asks, at first and after a
            probe that found a hit.
        probe_max: the interval's cap as probes that find nothing double it (equal to
            ``probe_every``: no backoff).
    """

    def __init__(
        self, min_share: float, weight: float, probe_every: int, probe_max: int | None = None
    ) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        if probe_every < 1:
            raise ValueError(f"probe_every must be >= 1, got {probe_every}")
        probe_max = probe_every if probe_max is None else probe_max
        if probe_max < probe_every:
            raise ValueError(f"probe_max must be >= probe_every ({probe_every}), got {probe_max}")
        self.min_share = min_share
        self.weight = weight
        self.probe_every = probe_every
        self.probe_max = probe_max
        self.interval = probe_every  # one request in this many asks while below
        self.share = 1.0  # repeats are assumed until requests show otherwise
        self._passed = 0

    def asks(self) -> bool:
        """Whether this request looks up and stores in the caches."""
        if self.share >= self.min_share:
            return True
        self._passed += 1
        if self._passed < self.interval:
            return False
        self._passed = 0
        return True

    @property
    def stands_for(self) -> int:
        """How many requests one that asks stands for: the probe interval while only probes
        ask, else 1."""
        return 1 if self.share >= self.min_share else self.interval

    def note(self, hits: int, rows: int) -> None:
        """Fold the hits of a request that asked the caches into the share, and set the probe
        interval: back to ``probe_every`` on a hit, doubled (up to ``probe_max``) by a probe
        that found none."""
        if rows:
            probe = self.share < self.min_share
            self.share += self.weight * (hits / rows - self.share)
            if hits:
                self.interval = self.probe_every
            elif probe:
                self.interval = min(2 * self.interval, self.probe_max)
