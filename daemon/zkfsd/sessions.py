"""Session deadlines, owned by the member that leads (a standalone server leads itself).

The set of live sessions is replicated state (it lives in the tree, changed only by
createSession/closeSession transactions); *when* a session expires is local to the leader. The
tracker only answers "which sessions are overdue at time t"; the server turns each into a
closeSession transaction. Time is passed in, never read, so tests drive it directly.
"""
from __future__ import annotations


import secrets


class SessionTracker:
    def __init__(self) -> None:
        self._deadline: dict[int, float] = {}
        self._timeout: dict[int, float] = {}
        self._expiring: set[int] = set()

    def add(self, session_id: int, timeout_s: float, now: float) -> None:
        """Track a session; also used after recovery or a leader change to give a fresh timeout."""
        self._timeout[session_id] = timeout_s
        self._deadline[session_id] = now + timeout_s
        self._expiring.discard(session_id)

    def touch(self, session_id: int, now: float) -> bool:
        """Client activity; False if the session is unknown or already being expired."""
        if session_id not in self._deadline or session_id in self._expiring:
            return False
        self._deadline[session_id] = now + self._timeout[session_id]
        return True

    def remove(self, session_id: int) -> None:
        self._deadline.pop(session_id, None)
        self._timeout.pop(session_id, None)
        self._expiring.discard(session_id)

    def overdue(self, now: float) -> list[int]:
        """Sessions past their deadline, each reported once (they are then 'expiring')."""
        due = [sid for sid, dl in self._deadline.items() if dl <= now and sid not in self._expiring]
        self._expiring.update(due)
        return sorted(due)



class SessionIdGenerator:
    """ZooKeeper's layout: server id in the top byte, a time-seeded counter below it."""

    def __init__(self, server_id: int, now_ms: int) -> None:
        self._next = ((server_id & 0xFF) << 56) | ((now_ms << 24) & 0x00FFFFFFFFFFFFFF) >> 8 << 8
        self._next &= 0x7FFFFFFFFFFFFFFF  # session ids are positive longs

    def next(self, taken: "set[int] | dict[int, object]") -> int:
        while True:
            self._next += 1
            if self._next not in taken:
                return self._next


def new_password() -> bytes:
    return secrets.token_bytes(16)



