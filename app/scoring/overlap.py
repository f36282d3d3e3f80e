"""Whether the requests of a turn of the event loop overlap enough to pool their misses.

Pooling the misses of one turn (:class:`~app.scoring.coalescer.MissCoalescer` for single
rows, :class:`~app.scoring.batch_misses.BatchMissPool` for batches) costs every request an
extra turn of the loop and a future, which a request alone in its turn pays for nothing.
So each keeps a moving average of what its pools held; while it is below
``DIRECT_BELOW``, a request is handled alone at once, and one in ``PROBE_EVERY`` still
tries pooling, so that pooling comes back as soon as requests overlap again. An average,
not the last pool: with cache hits among the requests, a turn often holds a single miss,
and going direct after every lone pool scored the default model's single-row misses 2.25
to a call where 3.9 arrived together (app/scoring/coalescer.py has the figures).
"""

from __future__ import annotations

DIRECT_BELOW = 1.5  # requests are handled alone while pools held fewer than this on average,
WEIGHT = 0.125  # a pool's weight in that average (it follows the last ~8 pools),
PROBE_EVERY = 16  # and one request in this many tries pooling all the same.


class Overlap:
    """A moving average of what each pool held, and the decision it gives, per request."""

    def __init__(self) -> None:
        self.average = 2.0  # pooling is tried from the start
        self._direct = 0  # requests handled alone since pooling was last tried

    @property
    def pooling(self) -> bool:
        """Whether requests have been overlapping lately."""
        return self.average >= DIRECT_BELOW

    def goes_direct(self, free: bool) -> bool:
        """Whether this request is handled alone, at once: requests have not been
        overlapping, nothing else holds it back (``free``: no pool is open for it to join,
        say), and it is not a probe."""
        if not self.pooling and free and self._direct < PROBE_EVERY - 1:
            self._direct += 1
            return True
        self._direct = 0
        return False

    def formed(self, size: int) -> None:
        """Fold a pool of ``size`` (rows or requests) into the average."""
        self.average += WEIGHT * (size - self.average)
