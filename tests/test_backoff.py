"""Unit tests of backoff: jittered, capped waits after failures, and the idle wait."""

from __future__ import annotations

import random

import pytest

from leampoll.backoff import IDLE_JITTER, Backoff, idle_wait


@pytest.mark.parametrize(
    ("base", "cap", "floor"),
    [(20, 600, 1), (1, 600, 1), (1, 60, 5), (0.5, 10, 1), (3, 3, 1), (10, 0.5, 1), (2, 100, 0)],
)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_backoff_bounds(base, cap, floor, seed):
    b = Backoff(base=base, cap=cap, floor=floor, rng=random.Random(seed))
    for n in range(60):
        ceiling = min(cap, base * 2**n)
        wait = b.next()
        assert min(floor, ceiling) <= wait <= cap
        assert wait <= max(ceiling, min(floor, ceiling))
    assert b.failures == 60


@pytest.mark.parametrize(("base", "cap"), [(1, 600), (20, 600), (2, 1000)])
def test_backoff_ceiling_grows_until_cap(base, cap):
    rng = random.Random(42)
    previous = 0.0
    for n in range(12):
        draws = [Backoff(base=base, cap=cap, failures=n, rng=rng).next() for _ in range(400)]
        ceiling = min(cap, base * 2**n)
        top = max(draws)
        assert top <= ceiling
        assert top >= 0.95 * ceiling
        assert top >= previous * 0.95
        previous = top
    assert previous >= 0.95 * cap


def test_backoff_is_jittered():
    b = Backoff(base=10, cap=600, rng=random.Random(3))
    draws = []
    for _ in range(50):
        b.failures = 4
        draws.append(b.next())
    assert len(set(draws)) > 40


def test_backoff_counts_failures_and_reset_returns_to_start():
    b = Backoff(base=4, cap=600, floor=1, rng=random.Random(5))
    for _ in range(8):
        b.next()
    assert b.failures == 8
    b.reset()
    assert b.failures == 0
    assert 1 <= b.next() <= 4
    assert b.failures == 1


def test_backoff_reset_sequence_matches_fresh():
    first = Backoff(base=2, cap=300, rng=random.Random(9))
    fresh = Backoff(base=2, cap=300, rng=random.Random(9))
    for _ in range(10):
        first.next()
    first.reset()
    fresh_bounds = [min(300, 2 * 2**n) for n in range(10)]
    for bound in fresh_bounds:
        assert first.next() <= bound
    assert fresh.failures == 0


@pytest.mark.parametrize("retry_after", [0.0, 5.0, 100.0, 599.0, 600.0, 601.0, 10_000.0, 1e12])
@pytest.mark.parametrize("failures", [0, 3, 20])
def test_backoff_retry_after_raises_wait_within_cap(retry_after, failures):
    cap = 600.0
    b = Backoff(base=1, cap=cap, failures=failures, rng=random.Random(11))
    wait = b.next(retry_after)
    assert wait <= cap
    assert wait >= min(retry_after, cap)
    assert b.failures == failures + 1


def test_backoff_retry_after_does_not_lower_wait():
    for seed in range(20):
        plain = Backoff(base=100, cap=600, failures=2, rng=random.Random(seed)).next()
        with_header = Backoff(base=100, cap=600, failures=2, rng=random.Random(seed)).next(1.0)
        assert with_header == plain


def test_backoff_many_failures_does_not_overflow():
    b = Backoff(base=1, cap=600, failures=10_000, rng=random.Random(0))
    assert 1 <= b.next() <= 600


@pytest.mark.parametrize("speed", [0.5, 1, 20, 3600])
def test_idle_wait_within_bounds(speed):
    rng = random.Random(speed)
    draws = [idle_wait(speed, rng) for _ in range(500)]
    assert all(0.9 * speed <= w <= speed for w in draws)
    assert min(draws) < 0.92 * speed  # it is jittered, not constant
    assert max(draws) > 0.98 * speed
    assert pytest.approx(0.1) == IDLE_JITTER


def test_idle_wait_without_rng():
    for _ in range(100):
        assert 18 <= idle_wait(20) <= 20
