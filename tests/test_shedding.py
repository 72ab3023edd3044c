"""Load shedding's governor (reidstream/pipeline/shedding.py): when a worker's stride changes.

The worker that follows it, on real frames, a real detector and a real broker, is tested in
test_pipeline.py (``test_a_late_worker_sheds_load_on_a_stride_and_returns_when_on_time``).
"""

from __future__ import annotations

import pytest

from reidstream.config import ConfigError, load_config
from reidstream.pipeline.shedding import MAX_WAIT_FACTOR, StrideGovernor

LATE, ON_TIME, BETWEEN = [3000.0, 2500.0, 2800.0], [200.0, 150.0], [700.0]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def governor(clock: Clock, base: int = 1, most: int = 2, hold_s: float = 2.0) -> StrideGovernor:
    return StrideGovernor(base, most, shed_ms=1000.0, restore_ms=500.0, hold_s=hold_s,
                          clock=clock)


def on_time(g: StrideGovernor, clock: Clock, step_s: float = 0.25) -> float:
    """Steps on time until the stride comes down one; returns how long that took."""
    start, stride = clock.now, g.stride
    while g.observe(ON_TIME) == stride:
        clock.now += step_s
    return clock.now - start


def test_a_worker_starts_shed_and_comes_down_once_on_time_for_the_hold() -> None:
    clock = Clock()
    g = governor(clock, base=2, most=4)
    assert g.stride == 2
    assert g.observe(ON_TIME) == 4  # first wall-clock frames: a backlog, models warming up
    assert on_time(g, clock) == 2.0
    assert on_time(g, clock) == 2.0 and g.stride == 2
    clock.now += 100.0
    assert g.observe(ON_TIME) == 2  # never below detection.stride


def test_a_late_worker_sheds_after_the_hold_and_no_further_than_max_stride() -> None:
    clock = Clock()
    g = governor(clock, most=3)
    on_time(g, clock)
    on_time(g, clock)
    on_time(g, clock)
    assert g.stride == 1
    assert g.observe(LATE) == 1  # just changed: the hold has not passed
    clock.now += 2.0
    assert g.observe(LATE) == 2
    clock.now += 1.0
    assert g.observe(LATE) == 2  # a change waits hold_s before the next
    clock.now += 1.0
    assert g.observe(LATE) == 3
    clock.now += 10.0
    assert g.observe(LATE) == 3  # max_stride
    clock.now += 10.0
    assert g.observe(BETWEEN) == 3  # neither late nor on time: stays


def test_one_slow_step_among_on_time_ones_is_not_late() -> None:
    """The median of the last hold_s decides: a step that embedded a burst of crops is slow
    for its own frames only; steady lateness sheds."""
    clock = Clock()
    g = governor(clock)
    g.observe(ON_TIME)
    on_time(g, clock)
    for step in range(40):
        clock.now += 0.25
        assert g.observe(LATE if step % 4 == 0 else ON_TIME) == 1
    for _ in range(4):
        clock.now += 0.25
        g.observe(LATE)
    assert g.stride == 2


def test_a_stride_that_runs_late_again_soon_is_retried_later_and_later() -> None:
    """A worker that cannot keep up at stride 1 (four cameras on two cores) tries it again
    after 2, 4, 8 ... s, not every 2 s; a stride 1 that held resets the wait."""
    clock = Clock()
    g = governor(clock)
    waits = []
    g.observe(ON_TIME)
    for _ in range(7):
        waits.append(on_time(g, clock))
        clock.now += 2.0  # stride 1 runs late again straight away
        assert g.observe(LATE) == 2
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0]
    assert on_time(g, clock) == MAX_WAIT_FACTOR * 2.0
    clock.now += 500.0  # stride 1 held a long while, then a slow spell
    assert g.observe(LATE) == 2
    assert on_time(g, clock) == 2.0


def test_a_stride_only_just_too_short_fails_slowly_and_is_retried_later_and_later() -> None:
    """Two cameras in a slow spell: stride 1 runs late only after ~6 s, each time. That is a
    failure too (within 64 s of the return), or the worker would swing every ~8 s."""
    clock = Clock()
    g = governor(clock)
    g.observe(ON_TIME)
    waits = []
    for _ in range(4):
        waits.append(on_time(g, clock))
        for _ in range(24):  # 6 s at stride 1, on time
            clock.now += 0.25
            assert g.observe(BETWEEN) == 1
        clock.now += 0.25
        assert g.observe(LATE) == 1  # the window's median is not late yet
        while g.observe(LATE) == 1:
            clock.now += 0.25
    # 2, 4, 8, 16 s, after the first plus the second the late frames take to leave the window
    assert waits == [2.0, 5.0, 9.0, 17.0]


def test_replayed_frames_and_a_fixed_stride_never_shed() -> None:
    clock = Clock()
    g = governor(clock)
    for _ in range(40):
        clock.now += 0.25
        assert g.observe([]) == 1  # no wall-clock frame in the step (a replayed scene)
    assert g.changes == 0
    fixed = governor(clock, base=2, most=2)
    assert not fixed.sheds and fixed.observe(LATE) == 2 and fixed.changes == 0
    assert governor(clock, base=3, most=2).observe(LATE) == 3  # max_stride below stride


def test_shedding_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="restore_latency_s"):
        load_config(overrides={"detection.restore_latency_s": 1.0})
    with pytest.raises(ConfigError, match="detection.stride"):
        load_config(overrides={"detection.stride": 0})
    with pytest.raises(ConfigError, match="shed_hold_s"):
        load_config(overrides={"detection.shed_hold_s": -1.0})
    with pytest.raises(ConfigError, match="max_stride"):
        load_config(overrides={"detection.max_stride": 0})
    with pytest.raises(ValueError, match="shed_hold_s"):  # the governor guards its own use too
        StrideGovernor(1, 2, 1000.0, 500.0, -1.0)
    cfg = load_config()
    assert cfg.detection.max_stride > cfg.detection.stride  # on by default


def test_without_a_hold_each_step_decides() -> None:
    clock = Clock()
    g = governor(clock, hold_s=0.0)
    strides = []
    for latencies in (LATE, LATE, ON_TIME, BETWEEN, LATE, ON_TIME):
        clock.now += 0.25
        strides.append(g.observe(latencies))
    assert strides == [2, 2, 1, 1, 2, 1]


def test_on_time_but_busy_is_no_reason_to_detect_more() -> None:
    """Four cameras at stride 2 on two cores are on time between bursts, but the worker is
    busy all the time: stride 1 would fall behind. Idle enough, it comes back."""
    clock = Clock()
    g = StrideGovernor(1, 2, shed_ms=1000.0, restore_ms=500.0, hold_s=2.0, restore_busy=0.6,
                       clock=clock)

    def run(busy_share: float, seconds: float) -> int:
        for _ in range(int(seconds / 0.25)):
            clock.now += 0.25
            g.observe(ON_TIME, busy_s=0.25 * busy_share)
        return g.stride

    assert run(0.95, 20.0) == 2
    assert g.busy_share == pytest.approx(0.95)
    assert run(0.4, 0.75) == 2  # the last 2 s are still mostly the busy time
    assert run(0.4, 3.0) == 1
    assert StrideGovernor(1, 2, 1000.0, 500.0, 0.0).busy_share == 0.0  # no window to measure
