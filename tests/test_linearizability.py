"""Unit tests of tests/linearizability.py on small histories whose verdict is known."""
from __future__ import annotations

import random

import pytest

from linearizability import Op, check, check_key


def S(v, a, b, key="/k", c=None):  # noqa: N802 - short names keep histories readable
    return Op(key, "set", v, a, b, c)


def G(v, a, b, key="/k", c=None):  # noqa: N802
    return Op(key, "get", v, a, b, c)


def test_empty_and_initial_value():
    assert check([]).ok
    assert check_key([G(None, 0, 1)])
    assert not check_key([G("x", 0, 1)])  # nothing ever wrote x
    assert check_key([G("x", 0, 1)], initial="x")


def test_sequential_history():
    assert check_key([S(1, 0, 1), G(1, 2, 3), S(2, 4, 5), G(2, 6, 7)])


def test_stale_read_after_write_completed_is_not_linearizable():
    assert not check_key([S(1, 0, 1), S(2, 2, 3), G(1, 4, 5)])


def test_concurrent_write_may_be_seen_either_way():
    assert check_key([S(1, 0, 10), G(1, 2, 3), G(None, 4, 5)]) is False  # 1 then back to None
    assert check_key([S(1, 0, 10), G(None, 2, 3), G(1, 4, 5)])
    assert check_key([S(1, 0, 10), G(1, 2, 3), G(1, 4, 5)])


def test_reads_must_agree_on_order_of_concurrent_writes():
    # Two concurrent writes; one reader sees 1 then 2, another (later, non-overlapping) 2 then 1.
    h = [S(1, 0, 10), S(2, 0, 10), G(1, 1, 2), G(2, 3, 4), G(1, 5, 6)]
    assert not check_key(h)
    assert check_key(h[:4])


def test_unknown_outcome_write_may_have_happened_or_not():
    assert check_key([S(1, 0, None), G(None, 5, 6)])
    assert check_key([S(1, 0, None), G(1, 5, 6)])
    assert check_key([S(1, 0, None), G(None, 5, 6), G(1, 7, 8)])  # took effect late
    # ... but not before it was invoked, and not undone once seen.
    assert not check_key([G(1, 0, 1), S(1, 2, None)])
    assert not check_key([S(1, 0, None), G(1, 5, 6), G(None, 7, 8)])


def test_unknown_outcome_read_is_ignored():
    assert check_key([S(1, 0, 1), G("garbage", 2, None)])


def test_keys_are_independent_and_reported():
    h = [S(1, 0, 1, key="/a"), G(1, 2, 3, key="/a"), S(1, 0, 1, key="/b"), G(None, 2, 3, key="/b")]
    r = check(h)
    assert not r.ok and r.bad_key == "/b"
    assert "/b" in r.explain()
    assert check(h[:2]).ok


def test_touching_intervals_count_as_concurrent():
    # set returns at 1, get invoked at 1 and sees the old value: allowed (lenient on ties).
    assert check_key([S(1, 0, 1), G(None, 1, 2)])


def test_op_validation():
    with pytest.raises(ValueError):
        Op("/k", "cas", 1, 0, 1)
    with pytest.raises(ValueError):
        Op("/k", "set", 1, 2, 1)


def _simulate(seed: int, corrupt: bool) -> list[Op]:
    """A random concurrent history produced by a real atomic register (linearizable by
    construction); with `corrupt`, one read is changed to a value that was overwritten
    before the read started."""
    rng = random.Random(seed)
    t = 0.0
    value = None
    ops: list[Op] = []
    pending: list[tuple[int, str, object, float]] = []  # (client, kind, value, invoke)
    history_vals: list[tuple[float, object]] = [(0.0, None)]
    for step in range(60):
        t += rng.random()
        client = rng.randrange(4)
        if any(p[0] == client for p in pending) or rng.random() < 0.4:
            # Take effect and/or return one pending op.
            if pending:
                c, kind, v, inv = pending.pop(rng.randrange(len(pending)))
                lin = t
                if kind == "set":
                    value = v
                    history_vals.append((lin, v))
                    ops.append(Op("/k", "set", v, inv, t + rng.random() * 0.5, c))
                else:
                    ops.append(Op("/k", "get", value, inv, t + rng.random() * 0.5, c))
            continue
        if rng.random() < 0.5:
            pending.append((client, "set", f"v{step}", t))
        else:
            pending.append((client, "get", None, t))
    if corrupt:
        # A read that starts after two completed writes but returns the older one's value.
        t += 10
        ops.append(Op("/k", "set", "A", t, t + 1, 9))
        ops.append(Op("/k", "set", "B", t + 2, t + 3, 9))
        ops.append(Op("/k", "get", "A", t + 4, t + 5, 8))
    return ops


@pytest.mark.parametrize("seed", range(20))
def test_random_histories_from_an_atomic_register(seed):
    assert check(_simulate(seed, corrupt=False)).ok
    assert not check(_simulate(seed, corrupt=True)).ok
