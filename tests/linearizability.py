"""A small linearizability checker for read/write registers (Wing & Gong's search with the
memoisation of Lowe / porcupine), one independent register per key (znode path).

A history is a list of `Op`s. Each op has the times it was invoked and returned (any monotonic
clock, the same for all clients); `response=None` means the outcome is unknown (the client lost
its connection): the op may or may not have taken effect, at any time after its invocation.
Such a write is given an open-ended response; such a read constrains nothing and is dropped.

    ops = [Op("/a", "set", "x", 0.0, 1.0), Op("/a", "get", "x", 1.5, 2.0)]
    result = check(ops, initial={"/a": None})
    assert result.ok, result.explain()

Linearizability is compositional (Herlihy & Wing), so each key is checked on its own.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class Op:
    key: str
    kind: str            # "set" or "get"
    value: Any           # the value written, or the value read
    invoke: float
    response: float | None  # None: unknown outcome
    client: Any = None

    def __post_init__(self) -> None:
        if self.kind not in ("set", "get"):
            raise ValueError(f"unknown op kind {self.kind!r}")
        if self.response is not None and self.response < self.invoke:
            raise ValueError(f"op returns before it was invoked: {self}")


@dataclass
class Result:
    ok: bool
    bad_key: str | None = None
    bad_ops: list[Op] = field(default_factory=list)
    checked_ops: int = 0

    def explain(self) -> str:
        if self.ok:
            return f"linearizable ({self.checked_ops} ops)"
        lines = [f"key {self.bad_key!r} is not linearizable; its ops by invocation time:"]
        for op in sorted(self.bad_ops, key=lambda o: o.invoke)[:200]:
            resp = "?" if op.response is None else f"{op.response:.6f}"
            lines.append(f"  [{op.invoke:.6f}, {resp}] client={op.client} {op.kind} {op.value!r}")
        return "\n".join(lines)


class _Entry:
    __slots__ = ("op_id", "is_call", "time", "match", "prev", "next")

    def __init__(self, op_id: int, is_call: bool, time: float) -> None:
        self.op_id = op_id
        self.is_call = is_call
        self.time = time
        self.match: _Entry | None = None  # for a call: its return entry
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _step(state: Any, op: Op) -> tuple[bool, Any]:
    if op.kind == "set":
        return True, op.value
    return state == op.value, state


def check_key(ops: list[Op], initial: Any = None, max_steps: int = 2_000_000) -> bool:
    """True if the history of one register is linearizable."""
    ops = [op for op in ops if not (op.kind == "get" and op.response is None)]
    if not ops:
        return True
    events: list[tuple[float, int, int]] = []  # (time, 0 call / 1 return, op id)
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        events.append((math.inf if op.response is None else op.response, 1, i))
    # At equal times calls come first: touching intervals count as concurrent (lenient).
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Entry(-1, False, -math.inf)
    calls: dict[int, _Entry] = {}
    prev = head
    for t, kind, i in events:
        e = _Entry(i, kind == 0, t)
        if kind == 0:
            calls[i] = e
        else:
            calls[i].match = e
        prev.next, e.prev = e, prev
        prev = e

    def lift(call: _Entry) -> None:
        for e in (call, call.match):
            assert e is not None and e.prev is not None
            e.prev.next = e.next
            if e.next is not None:
                e.next.prev = e.prev

    def unlift(call: _Entry) -> None:
        for e in (call.match, call):
            assert e is not None and e.prev is not None
            e.prev.next = e
            if e.next is not None:
                e.next.prev = e

    linearized = 0  # bitset of op ids
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[_Entry, Any]] = []
    state = initial
    entry = head.next
    steps = 0
    while head.next is not None:
        steps += 1
        if steps > max_steps:
            raise RuntimeError("linearizability search exceeded its step budget")
        assert entry is not None
        if entry.is_call:
            ok, new_state = _step(state, ops[entry.op_id])
            if ok:
                bits = linearized | (1 << entry.op_id)
                key = (bits, _hashable(new_state))
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized = bits
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A return whose op is not linearized yet: backtrack.
            if not stack:
                return False
            call, state = stack.pop()
            linearized &= ~(1 << call.op_id)
            unlift(call)
            entry = call.next
    return True


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def check(ops: Iterable[Op], initial: dict[str, Any] | None = None,
          default: Any = None) -> Result:
    """Check every key's history; `initial[key]` (else `default`) is the value before all ops."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    n = 0
    for op in ops:
        by_key[op.key].append(op)
        n += 1
    initial = initial or {}
    for key in sorted(by_key):
        if not check_key(by_key[key], initial.get(key, default)):
            return Result(False, key, by_key[key], n)
    return Result(True, checked_ops=n)
