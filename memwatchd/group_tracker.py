"""Groups and host sums kept up to date from each snapshot's changes, pure: summarize() with a memory.

A Snapshot from the Merger says what changed since the previous one (`fresh` records, `gone` identities);
every other record is the previous snapshot's very object. GroupTracker applies those changes to per-group
sums instead of walking every process, so a cycle where few processes changed costs in proportion to them
(plus one step per group for the charges, which the kernel changes every cycle). Its results equal
summarize() over the snapshot's processes (tests/test_group_tracker.py checks it after random changes, exits
and cgroup moves). No I/O: charges are read by the caller, for the paths paths() names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from memwatchd.groups import LARGEST_KEPT, charge_paths, host_from_sums, sample_of, unit_cgroup
from memwatchd.models import GroupCharge, GroupSample, HostMemory, ProcessSnapshot, Snapshot

_Key = tuple[int, int]  # (pid, start_ticks)


def _rank(p: ProcessSnapshot) -> tuple[int, int]:
    """Order of a group's largest members: by RSS, largest first, then by pid (as summarize())."""
    return -(p.rss_kb or 0), p.pid


def _counts(p: ProcessSnapshot) -> bool:
    """Whether p is in a group: kernel threads (no address space) and exited processes are not."""
    return not p.exited and p.rss_kb is not None and bool(p.vm_kb)


class _Group:
    """One group's running sums, its members and its largest few."""

    __slots__ = ("n", "rss", "anon", "swap", "members", "places", "top")

    def __init__(self) -> None:
        self.n = self.rss = self.anon = self.swap = 0
        self.members: dict[_Key, ProcessSnapshot] = {}
        self.places: dict[str | None, int] = {}  # units of a cgroup group; unit cgroups of a unit group
        self.top: list[ProcessSnapshot] | None = []  # the largest LARGEST_KEPT, by _rank; None: recompute

    def add(self, key: _Key, p: ProcessSnapshot, place: str | None) -> None:
        self.n += 1
        self.rss += p.rss_kb or 0
        self.anon += p.anon_kb or 0
        self.swap += p.swap_kb or 0
        self.members[key] = p
        self.places[place] = self.places.get(place, 0) + 1
        top = self.top
        if top is not None and (len(top) < LARGEST_KEPT or _rank(p) < _rank(top[-1])):
            top.append(p)
            top.sort(key=_rank)
            del top[LARGEST_KEPT:]

    def remove(self, key: _Key, p: ProcessSnapshot, place: str | None) -> None:
        self.n -= 1
        self.rss -= p.rss_kb or 0
        self.anon -= p.anon_kb or 0
        self.swap -= p.swap_kb or 0
        del self.members[key]
        left = self.places[place] - 1
        if left:
            self.places[place] = left
        else:
            del self.places[place]
        top = self.top
        if top is not None and any(x is p for x in top):
            self.top = None  # the next in line is somewhere among the members: found when asked

    def replace(self, key: _Key, old: ProcessSnapshot, new: ProcessSnapshot) -> None:
        """The same member (same place) with new values."""
        self.rss += (new.rss_kb or 0) - (old.rss_kb or 0)
        self.anon += (new.anon_kb or 0) - (old.anon_kb or 0)
        self.swap += (new.swap_kb or 0) - (old.swap_kb or 0)
        self.members[key] = new
        top = self.top
        if top is None:
            return
        at = next((i for i, x in enumerate(top) if x is old), -1)
        if at >= 0:
            if _rank(new) > _rank(old):
                self.top = None  # it shrank: another member may now rank above it
                return
            top[at] = new
            top.sort(key=_rank)
        elif len(top) < LARGEST_KEPT or _rank(new) < _rank(top[-1]):
            top.append(new)
            top.sort(key=_rank)
            del top[LARGEST_KEPT:]

    def largest(self) -> list[ProcessSnapshot]:
        if self.top is None:
            self.top = sorted(self.members.values(), key=_rank)[:LARGEST_KEPT]
        return self.top

    def place(self) -> str | None:
        return next(iter(self.places)) if len(self.places) == 1 else None


class GroupTracker:
    """Per-cgroup and per-unit sums and the host breakdown, updated from each snapshot's changes."""

    __slots__ = (
        "_seq", "_members", "_cg", "_unit", "_rss", "_anon", "_placements", "_paths", "_dirty", "_out_of",
        "_order", "_out",
    )  # fmt: skip

    def __init__(self) -> None:
        self._reset()
        self._paths: frozenset[str] | None = frozenset()

    def _reset(self) -> None:
        self._seq: int | None = None  # seq of the last snapshot taken in
        self._members: dict[_Key, ProcessSnapshot] = {}
        self._cg: dict[str, _Group] = {}
        self._unit: dict[str, _Group] = {}
        self._rss = self._anon = 0
        self._placements: dict[tuple[str, str | None], int] = {}  # (cgroup, unit) -> members there
        self._paths = None
        self._dirty: set[tuple[str, str]] = set()  # (by, group) whose sums or members changed
        # each group's last GroupSample and the charge it was built with
        self._out_of: dict[tuple[str, str], tuple[GroupSample, GroupCharge | None]] = {}
        self._order: list[tuple[str, str]] | None = None  # cgroups then units, sorted; None: re-sort
        self._out: tuple[GroupSample, ...] = ()

    def shrink(self) -> None:
        """Member tables sized for the members there are (see Merger.shrink)."""
        self._members = dict(self._members)
        for g in (*self._cg.values(), *self._unit.values()):
            g.members = dict(g.members)

    @property
    def seq(self) -> int | None:
        """Snapshot.seq of the last snapshot taken in (None: none yet)."""
        return self._seq

    def paths(self) -> frozenset[str]:
        """The cgroup paths whose charges the current groups need (see groups.charge_paths)."""
        if self._paths is None:
            self._paths = frozenset(charge_paths(self._placements))
        return self._paths

    def update(
        self, snap: Snapshot, charges: Mapping[str, GroupCharge]
    ) -> tuple[tuple[GroupSample, ...], HostMemory | None]:
        """The groups and host breakdown of `snap` (as summarize(snap.processes, charges, snap.meminfo)).

        When snap follows the last snapshot taken in and says what changed, only its changes are applied;
        otherwise every process is taken in afresh.
        """
        if snap.fresh is not None and snap.base_seq is not None and snap.base_seq == self._seq:
            members = self._members
            for k in snap.gone:
                old = members.get(k)
                if old is not None:
                    self._remove(k, old)
            for p in snap.fresh:
                k = p.ident
                old = members.get(k)
                if _counts(p):
                    if old is None:
                        self._add(k, p)
                    elif old.cgroup == p.cgroup and old.unit == p.unit:
                        self._replace(k, old, p)
                    else:
                        self._remove(k, old)
                        self._add(k, p)
                elif old is not None:
                    self._remove(k, old)
        else:
            self._reset()
            self._take_all(snap.processes)
        self._seq = snap.seq
        return self._groups(charges), host_from_sums(snap.meminfo, self._rss, self._anon)

    def _take_all(self, processes: Iterable[ProcessSnapshot]) -> None:
        for p in processes:
            if _counts(p):
                k = p.ident
                old = self._members.get(k)
                if old is not None:  # one identity twice in a snapshot: summarize() counts both
                    k = (p.pid, -1 - len(self._members))
                self._add(k, p)

    def _add(self, k: _Key, p: ProcessSnapshot) -> None:
        self._members[k] = p
        self._rss += p.rss_kb or 0
        self._anon += p.anon_kb or 0
        cg, unit = p.cgroup, p.unit
        if cg:
            self._group(self._cg, "cgroup", cg).add(k, p, unit)
            pl = (cg, unit)
            n = self._placements.get(pl, 0)
            self._placements[pl] = n + 1
            if not n:
                self._paths = None
        if unit:
            self._group(self._unit, "unit", unit).add(k, p, unit_cgroup(cg, unit))

    def _remove(self, k: _Key, p: ProcessSnapshot) -> None:
        del self._members[k]
        self._rss -= p.rss_kb or 0
        self._anon -= p.anon_kb or 0
        cg, unit = p.cgroup, p.unit
        if cg:
            self._ungroup(self._cg, "cgroup", cg, k, p, unit)
            pl = (cg, unit)
            n = self._placements[pl] - 1
            if n:
                self._placements[pl] = n
            else:
                del self._placements[pl]
                self._paths = None
        if unit:
            self._ungroup(self._unit, "unit", unit, k, p, unit_cgroup(cg, unit))

    def _replace(self, k: _Key, old: ProcessSnapshot, p: ProcessSnapshot) -> None:
        self._members[k] = p
        self._rss += (p.rss_kb or 0) - (old.rss_kb or 0)
        self._anon += (p.anon_kb or 0) - (old.anon_kb or 0)
        if p.cgroup:
            self._cg[p.cgroup].replace(k, old, p)
            self._dirty.add(("cgroup", p.cgroup))
        if p.unit:
            self._unit[p.unit].replace(k, old, p)
            self._dirty.add(("unit", p.unit))

    def _group(self, table: dict[str, _Group], by: str, name: str) -> _Group:
        g = table.get(name)
        if g is None:
            g = table[name] = _Group()
            self._order = None
        self._dirty.add((by, name))
        return g

    def _ungroup(
        self, table: dict[str, _Group], by: str, name: str, k: _Key, p: ProcessSnapshot, place: str | None
    ) -> None:
        g = table[name]
        g.remove(k, p, place)
        if g.n:
            self._dirty.add((by, name))
        else:
            del table[name]
            self._out_of.pop((by, name), None)
            self._dirty.discard((by, name))
            self._order = None

    def _groups(self, charges: Mapping[str, GroupCharge]) -> tuple[GroupSample, ...]:
        order = self._order
        rebuilt = order is None
        if order is None:
            order = self._order = [("cgroup", cg) for cg in sorted(self._cg)] + [
                ("unit", u) for u in sorted(self._unit)
            ]
        dirty, out_of = self._dirty, self._out_of
        out: list[GroupSample] = []
        for gk in order:
            by, name = gk
            g = self._cg[name] if by == "cgroup" else self._unit[name]
            place = g.place()
            cgroup: str | None
            unit: str | None
            if by == "cgroup":
                cgroup, unit, charge = name, place, charges.get(name)
            else:
                cgroup, unit = place, name
                charge = charges.get(place) if place else None
            have = out_of.get(gk)
            if have is not None and gk not in dirty and have[1] == charge:
                out.append(have[0])
                continue
            s = sample_of(by, name, g.n, g.rss, g.anon, g.swap, g.largest(), cgroup, unit, charge)
            out_of[gk] = (s, charge)
            out.append(s)
            rebuilt = True
        dirty.clear()
        if rebuilt or len(out) != len(self._out):
            self._out = tuple(out)
        return self._out
