"""The Prometheus endpoint's per-group sums, kept from each snapshot's changes (work in proportion to change).

A group is a process's systemd unit, else its comm (metrics.group_of). A Snapshot from the Merger names the
records built since the previous one (`fresh`) and the identities that left (`gone`); every other record is
the previous snapshot's very object, so only those two change the sums. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from memwatchd.models import ProcessSnapshot, Snapshot

RSS, ANON, SWAP, LIVE, RECORDS = range(5)  # a row: bytes of rss, anon and swap, live processes, all records


def group_of(p: ProcessSnapshot) -> str:
    """The group a process is exported under: its systemd unit, else its comm."""
    return p.unit or p.comm or "unknown"


class GroupRows:
    """group -> [rss bytes, anon bytes, swap bytes, live processes, records] over one snapshot's processes.

    Exited rows count as records only (their group exists for its allocation counters); a group leaves
    when its last record does.
    """

    __slots__ = ("rows", "live", "_recs", "_seq")

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = {}
        self.live = 0  # live processes over all groups
        self._recs: dict[tuple[int, int], ProcessSnapshot] = {}
        self._seq: int | None = None

    def update(self, snap: Snapshot) -> Sequence[ProcessSnapshot]:
        """Take in snap; returns the records that are new since the previous one (all when unknown)."""
        fresh = snap.fresh
        if fresh is not None and snap.base_seq is not None and snap.base_seq == self._seq:
            recs = self._recs
            for k in snap.gone:
                old = recs.pop(k, None)
                if old is not None:
                    self._take(old, -1)
            for p in fresh:
                k = (p.pid, p.start_ticks)
                old = recs.get(k)
                if old is not None:
                    self._take(old, -1)
                recs[k] = p
                self._take(p, 1)
            changed: Sequence[ProcessSnapshot] = fresh
        else:
            self.rows, self.live, self._recs = {}, 0, {}
            for p in snap.processes:
                k = (p.pid, p.start_ticks)
                if k in self._recs:  # one identity twice in a snapshot: both count
                    k = (p.pid, -1 - len(self._recs))
                self._recs[k] = p
                self._take(p, 1)
            changed = snap.processes
        self._seq = snap.seq
        return changed

    def _take(self, p: ProcessSnapshot, sign: int) -> None:
        g = group_of(p)
        row = self.rows.get(g)
        if row is None:
            row = self.rows[g] = [0, 0, 0, 0, 0]
        row[RECORDS] += sign
        if not p.exited:
            row[RSS] += sign * (p.rss_kb or 0) * 1024
            row[ANON] += sign * (p.anon_kb or 0) * 1024
            row[SWAP] += sign * (p.swap_kb or 0) * 1024
            row[LIVE] += sign
            self.live += sign
        if not row[RECORDS]:
            del self.rows[g]
