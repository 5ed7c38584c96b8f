"""Property tests of the guards' arithmetic (leampoll.needs): learned needs and fitting.

Pure functions, so hypothesis tries thousands of histories and reservation
sequences: a need never falls below its floor nor below margin x any recent
peak, and admitting reservations one by one never promises more than is free.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from leampoll.needs import FIXED, LEARNED, RAISED, STATIC, Claim, available, changed, fit, learn
from leampoll.usage import ENDED_DISK_FULL, ENDED_EXIT, ENDED_OOM, JobUsage

sizes = st.integers(min_value=0, max_value=2**44)
margins = st.floats(min_value=1.0, max_value=4.0, allow_nan=False)


@st.composite
def runs(draw) -> list[JobUsage]:
    n = draw(st.integers(min_value=0, max_value=12))
    return [
        JobUsage(
            job_id=f"j{i}",
            started=float(i),
            peak_disk_bytes=draw(sizes),
            peak_memory_bytes=draw(sizes),
            peak_inodes=draw(st.integers(min_value=0, max_value=10**7)),
            ended=draw(st.sampled_from([ENDED_EXIT, ENDED_EXIT, ENDED_DISK_FULL, ENDED_OOM])),
            exit_code=0,
        )
        for i in range(n)
    ]


@given(runs(), sizes, margins, st.sampled_from(["disk", "memory", "inodes"]))
def test_a_learned_need_covers_the_floor_and_every_peak_with_its_margin(history, floor, margin, r):
    need = learn(r, floor, history, margin)
    assert need.amount >= floor
    peaks = [
        {"disk": u.peak_disk_bytes, "memory": u.peak_memory_bytes, "inodes": u.peak_inodes}[r]
        for u in history
    ]
    for p in peaks:
        assert need.amount >= math.floor(margin * p)
    if not any(u.short_of_resources for u in history):
        # Never more than it must be: the floor, or the margin over the highest peak.
        assert need.amount in (floor, math.ceil(margin * max(peaks, default=0)))
    if not history:
        assert need.source == STATIC and need.runs == 0
    elif need.amount > floor:
        assert need.source in (LEARNED, RAISED) and need.runs == len(history)


@given(runs(), sizes, margins)
def test_static_mode_and_fixed_needs_ignore_the_history(history, floor, margin):
    assert learn("disk", floor, history, margin, mode="static").amount == floor
    fixed = learn("disk", floor, history, margin, fixed=123)
    assert (fixed.amount, fixed.source) == (123, FIXED)


@given(sizes, sizes, margins)
def test_a_run_that_died_for_lack_of_space_raises_the_need_above_what_it_reached(
    reached, floor, margin
):
    ok = JobUsage("ok", 0.0, peak_disk_bytes=reached // 2, exit_code=0)
    died = JobUsage("full", 1.0, peak_disk_bytes=reached, ended=ENDED_DISK_FULL, exit_code=1)
    need = learn("disk", floor, [ok, died], margin)
    assert need.amount >= reached * margin - 1
    if need.amount > floor and reached > reached // 2:
        assert need.source == RAISED and need.job_id == "full" and "disk_full" in need.describe()


@given(runs(), sizes, margins, st.integers(min_value=1, max_value=2**45))
def test_a_run_that_died_short_at_least_doubles_the_need_it_ran_with_up_to_the_total(
    history, floor, margin, total
):
    died = JobUsage("died", 99.0, peak_disk_bytes=1, ended=ENDED_DISK_FULL, exit_code=1)
    before = learn("disk", floor, history, margin, total=total).amount
    after = learn("disk", floor, [*history, died], margin, total=total).amount
    assert after >= min(2 * before, total) and after >= before


def test_how_a_need_describes_where_it_came_from():
    runs_ = [JobUsage(f"j{i}", float(i), peak_disk_bytes=100, exit_code=0) for i in range(3)]
    assert learn("disk", 10, runs_, 1.2).describe() == "learned from 3 runs"
    assert learn("disk", 10, [], 1.2).describe() == "static"
    assert learn("disk", 1000, runs_, 1.2).describe() == "static floor (above 3 learned runs)"
    oom = JobUsage("big", 9.0, peak_memory_bytes=500, ended=ENDED_OOM, signal=9)
    assert learn("memory", 10, [*runs_, oom], 1.2).describe() == "raised after job big ended oom"


@given(sizes, st.lists(st.tuples(sizes, sizes), max_size=8))
def test_what_others_reserved_and_do_not_use_yet_is_not_free(free, claims):
    others = [Claim(r, u) for r, u in claims]
    room = available(free, others)
    assert room <= free
    assert room == free - sum(max(0, r - u) for r, u in claims)
    # A job using more than it reserved takes nothing more from the others: the
    # filesystem's free space already shows it.
    assert all(c.outstanding >= 0 for c in others)


@given(sizes, st.lists(sizes, min_size=1, max_size=20))
def test_admitting_reservations_one_by_one_never_promises_more_than_is_free(free, needs):
    """The ledger's rule, applied in any order: jobs not yet started use nothing,
    so the free space stays as it was and the sum of admitted needs must fit in it."""
    admitted: list[Claim] = []
    for need in needs:
        f = fit("disk", need, free, free, admitted)
        assert f.fits == (need <= free - sum(c.reserved for c in admitted))  # none turned away
        if f.fits:
            admitted.append(Claim(need, 0))
        assert sum(c.reserved for c in admitted) <= free


def test_two_jobs_each_needing_60_percent_never_fit_together():
    total = 512 * 2**20
    need = int(0.6 * total)
    first = fit("disk", need, total, total, [])
    assert first.fits
    second = fit("disk", need, total, total, [Claim(need, 0)])
    assert not second.fits and second.reserved == need
    # Halfway through the first job: its use is out of `free`, the rest still reserved.
    half = need // 2
    assert not fit("disk", need, total - half, total, [Claim(need, half)]).fits


@given(sizes, sizes)
def test_a_change_is_notable_only_beyond_ten_percent(old, new):
    if changed(old, new):
        assert abs(new - old) > 0.1 * max(old, 1)
    else:
        assert abs(new - old) <= 0.1 * max(old, 1)
