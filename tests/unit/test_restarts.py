"""The supervisor's restart policy (farm.pool.restarts), pure: a drained worker and one
that crashed after a long healthy run are replaced at once, a crash loop waits longer each
time up to a cap, a clean exit at once counts as a crash, nothing restarts while stopping;
and the log line says how the worker ended and what happens next."""

from __future__ import annotations

import signal

import pytest

from farm.pool.restarts import Exit, Restart, RestartPolicy, decide, line

POLICY = RestartPolicy(healthy_s=60, quick_s=5, backoff_s=1, factor=2, max_backoff_s=60)


def test_a_drained_worker_is_replaced_at_once_and_ends_a_crash_loop() -> None:
    assert decide(POLICY, 0, Exit(0, 812)) == Restart(0.0, "drained", 0)
    assert decide(POLICY, 4, Exit(0, 5)) == Restart(0.0, "drained", 0)


def test_a_crash_after_a_long_healthy_run_restarts_at_once() -> None:
    for code in (1, 70, -signal.SIGKILL, -signal.SIGSEGV):
        assert decide(POLICY, 3, Exit(code, 60)) == Restart(
            0.0, "crashed after a healthy run", 0)


def test_a_crash_loop_backs_off_exponentially_up_to_the_cap() -> None:
    streak, delays, reasons = 0, [], []
    for _ in range(9):
        restart = decide(POLICY, streak, Exit(1, 2.0))
        assert restart is not None
        streak = restart.streak
        delays.append(restart.delay_s)
        reasons.append(restart.reason)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert streak == 9
    assert reasons[:4] == ["crashed, 1st time in a row", "crashed, 2nd time in a row",
                           "crashed, 3rd time in a row", "crashed, 4th time in a row"]


def test_a_healthy_run_or_a_drain_resets_the_backoff() -> None:
    loop = decide(POLICY, 5, Exit(-signal.SIGKILL, 1))
    assert loop is not None and loop.delay_s == 32 and loop.streak == 6
    assert decide(POLICY, loop.streak, Exit(1, 59.9)) == Restart(
        60, "crashed, 7th time in a row", 7)
    healed = decide(POLICY, loop.streak, Exit(1, 60.0))
    assert healed is not None and healed.streak == 0 and healed.delay_s == 0
    again = decide(POLICY, healed.streak, Exit(1, 0.5))
    assert again == Restart(1, "crashed, 1st time in a row", 1)


def test_a_clean_exit_at_once_is_a_failure_to_start_not_a_drain() -> None:
    first = decide(POLICY, 0, Exit(0, 4.9))
    assert first == Restart(1, "exited at once, 1st time in a row", 1)
    assert decide(POLICY, first.streak, Exit(0, 0.1)) == Restart(
        2, "exited at once, 2nd time in a row", 2)


@pytest.mark.parametrize("ended", [Exit(0, 900), Exit(1, 0.1), Exit(-signal.SIGKILL, 3600),
                                   Exit(0, 0.1)])
@pytest.mark.parametrize("streak", [0, 1, 7])
def test_nothing_restarts_while_the_supervisor_is_stopping(ended: Exit, streak: int) -> None:
    assert decide(POLICY, streak, ended, stopping=True) is None
    assert decide(POLICY, streak, ended, stopping=False) is not None


@pytest.mark.parametrize("ran_s", [0.0, 0.5, 4.99, 5.0, 30.0, 59.99, 60.0, 1e6])
@pytest.mark.parametrize("code", [0, 1, 2, -signal.SIGTERM, -signal.SIGKILL])
@pytest.mark.parametrize("streak", [0, 1, 2, 6, 7, 50])
def test_every_exit_gets_a_bounded_restart(ran_s: float, code: int, streak: int) -> None:
    restart = decide(POLICY, streak, Exit(code, ran_s))
    assert restart is not None
    assert 0 <= restart.delay_s <= POLICY.max_backoff_s
    healthy = ran_s >= POLICY.healthy_s or (code == 0 and ran_s >= POLICY.quick_s)
    assert (restart.delay_s == 0) == healthy
    assert restart.streak == (0 if healthy else streak + 1)


def test_the_policy_refuses_inconsistent_numbers() -> None:
    for bad in ({"quick_s": 90.0}, {"backoff_s": 0.0}, {"backoff_s": 120.0},
                {"factor": 0.5}, {"quick_s": -1.0}):
        with pytest.raises(ValueError, match="inconsistent restart policy"):
            RestartPolicy(**bad)  # type: ignore[arg-type]


def test_an_exit_says_its_status_or_its_signal() -> None:
    assert Exit(0, 812.4).describe() == "exited with status 0 after 812s"
    assert Exit(3, 1.2).describe() == "exited with status 3 after 1s"
    assert Exit(-signal.SIGKILL, 40).describe() == "was killed by SIGKILL after 40s"
    assert Exit(-signal.SIGKILL, 40).signal == signal.SIGKILL and Exit(3, 1).signal is None
    assert Exit(-200, 1).describe() == "was killed by signal 200 after 1s"
    assert Exit(0, 1).clean and not Exit(-signal.SIGTERM, 1).clean


def test_the_log_lines() -> None:
    assert line("haiku-simple", Exit(0, 812), decide(POLICY, 0, Exit(0, 812))) == (
        "worker haiku-simple exited with status 0 after 812s (drained); restarting now")
    assert line("farm-intake", Exit(-signal.SIGKILL, 3), decide(POLICY, 1, Exit(-9, 3))) == (
        "worker farm-intake was killed by SIGKILL after 3s (crashed, 2nd time in a row); "
        "restarting in 2s")
    assert line("sonnet-complex", Exit(1, 0.2), Restart(0.25, "crashed", 1)) == (
        "worker sonnet-complex exited with status 1 after 0s (crashed); restarting in 0.25s")
    assert line("haiku-simple", Exit(0, 30), None) == (
        "worker haiku-simple exited with status 0 after 30s (stopping: not restarted)")


def test_ordinals() -> None:
    from farm.pool.restarts import _nth

    assert [_nth(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st",
        "111th", "112th"]
