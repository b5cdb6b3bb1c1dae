"""Leader election and group membership on ZooKeeper, for `zkfs elect` and `zkfs register`.

Election is ZooKeeper's lock recipe, laid out exactly as kazoo's `Election`/`Lock` lay it out so
that kazoo programs and `zkfs elect` can compete on the same path:
- each candidate creates an ephemeral sequential child `PATH/<uuid hex>__lock__<10 digits>`
  whose data is the candidate's identifier (UTF-8);
- the candidate with the lowest sequence number leads; every other one watches only the
  candidate just before it (no herd effect, no polling) and re-checks when that one goes;
- `contenders()` lists identifiers in order, as kazoo's `Election.contenders()` does.

Leading is a claim that can go stale: a leader cut off from the ensemble does not learn at once
that its session expired and a successor took over. `Lease` bounds that: it probes the
ensemble every `PROBE_FRACTION` of the session timeout T and reports the leadership as lost as
soon as nothing has been acknowledged for `TERM_FRACTION * T`. The server cannot expire the
session (and let the next candidate in) before T has passed since it last heard from us, and
it heard the last acknowledged probe after we sent it; so measuring from the sending time of
the last acknowledged probe, the supervised command is told at 0.5 T and killed at 0.8 T,
while a successor cannot start before 1.0 T (see `zkfs elect` in zkfs(1)).
"""
from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from zkfs.client import ClientState, WatchedEvent, ZkClient
from zkfs.errors import ConnectionLossError, NodeExistsError, NoNodeError, ZkError
from zkfs.paths import ancestors, base_name, join_path

__all__ = ["Contender", "Candidacy", "Lease", "Registration", "contenders", "leader",
           "ensure_path", "LOCK_MARK", "PARTY_MARK", "TERM_FRACTION", "KILL_FRACTION",
           "PROBE_FRACTION"]

#: kazoo's marker in lock/election node names (kazoo.recipe.lock.Lock._NODE_NAME).
LOCK_MARK = "__lock__"
#: kazoo's marker in Party member names (kazoo.recipe.party.Party._NODE_NAME).
PARTY_MARK = "__party__"
_CONTENDER = re.compile(re.escape(LOCK_MARK) + r"(-?\d{10})$")

#: Fractions of the negotiated session timeout T, counted from the sending time of the last
#: request the ensemble answered: probe every 0.1 T, stop the command at 0.5 T, kill it at
#: 0.8 T. The remaining 0.2 T covers clock-rate differences between hosts and scheduling.
PROBE_FRACTION = 0.1
TERM_FRACTION = 0.5
KILL_FRACTION = 0.8


@dataclass(frozen=True)
class Contender:
    """One candidate: its node name under the election path, sequence number and identifier."""
    node: str
    sequence: int
    identifier: str


def _parse(children: list[str]) -> list[tuple[int, str]]:
    found = []
    for child in children:
        m = _CONTENDER.search(child)
        if m is not None:
            found.append((int(m.group(1)), child))
    return sorted(found)


async def ensure_path(zk: ZkClient, path: str) -> None:
    """Create `path` and its missing ancestors as persistent nodes with null data (directories
    for the mount); nodes that exist are left alone."""
    path = path.rstrip("/") or "/"  # as typed on a command line
    for current in ancestors(path) + ([path] if path != "/" else []):
        if await zk.exists(current) is None:
            try:
                await zk.create(current, None)
            except NodeExistsError:
                pass


async def contenders(zk: ZkClient, path: str) -> list[Contender]:
    """The candidates on `path` in order (the first leads); [] if there are none."""
    try:
        children = await zk.get_children(path)
    except NoNodeError:
        return []
    result = []
    for sequence, node in _parse(children):
        try:
            data, _stat = await zk.get(join_path(path, node))
        except NoNodeError:
            continue  # gone meanwhile
        result.append(Contender(node, sequence, (data or b"").decode("utf-8", "replace")))
    return result


async def leader(zk: ZkClient, path: str) -> Contender | None:
    """The current leader of `path`, or None."""
    for contender in await contenders(zk, path):
        return contender
    return None


def default_identifier() -> str:
    return socket.gethostname()


class LeadershipLost(Exception):
    """Our candidate node is gone (session expired, or someone deleted it)."""


class Candidacy:
    """This process as one candidate for leading `path`."""

    def __init__(self, zk: ZkClient, path: str, identifier: str) -> None:
        self.zk = zk
        self.path = path.rstrip("/") or "/"
        self.identifier = identifier
        # kazoo's trick (from Curator): a unique prefix finds our node again if the reply to
        # the create was lost with the connection.
        self.prefix = uuid.uuid4().hex + LOCK_MARK
        self.node: str | None = None
        #: When the request that showed us leading was sent (trio clock): the ensemble heard
        #: from our session no earlier than that.
        self.checked_at = 0.0

    @property
    def node_path(self) -> str:
        assert self.node is not None
        return join_path(self.path, self.node)

    async def join(self) -> str:
        """Create our candidate node; returns its full path."""
        await ensure_path(self.zk, self.path)
        data = self.identifier.encode("utf-8")
        try:
            created = await self.zk.create(join_path(self.path, self.prefix), data,
                                           ephemeral=True, sequential=True)
            self.node = base_name(created)
        except ConnectionLossError:
            # The create may have been applied: look for our prefix before trying again.
            children = await self.zk.get_children(self.path)
            mine = [c for c in children if c.startswith(self.prefix)]
            if not mine:
                raise
            self.node = mine[0]
        return self.node_path

    async def wait_leading(self) -> None:
        """Return once we lead; raise LeadershipLost if our node vanished first."""
        assert self.node is not None
        while True:
            sent = trio.current_time()
            children = await self.zk.get_children(self.path)
            self.checked_at = sent
            ordered = _parse(children)
            if self.node not in [n for _s, n in ordered]:
                raise LeadershipLost(f"{self.node_path} is gone")
            ahead = [n for s, n in ordered if n != self.node and s < self._sequence()]
            if not ahead:
                return
            changed = trio.Event()

            def wake(_event: WatchedEvent) -> None:
                changed.set()
            # Watch only our predecessor: when it goes, we may lead (or watch the next one).
            if await self.zk.exists(f"{self.path.rstrip('/')}/{ahead[-1]}", watch=wake) is None:
                continue
            await changed.wait()

    def _sequence(self) -> int:
        assert self.node is not None
        m = _CONTENDER.search(self.node)
        assert m is not None
        return int(m.group(1))

    async def resign(self) -> None:
        """Delete our node (best effort: closing the session deletes it anyway)."""
        if self.node is None:
            return
        try:
            await self.zk.delete(self.node_path)
        except ZkError:
            pass
        self.node = None


class Lease:
    """Whether we may still act on an ephemeral node (leader or member), from the ensemble's
    answers: see the module docstring for the bound. `strict=False` (membership) only reports
    what the ensemble says (node gone, session expired), not silence."""

    def __init__(self, zk: ZkClient, node_path: str, *, strict: bool = True,
                 since: float | None = None) -> None:
        self.zk = zk
        self.node_path = node_path
        self.strict = strict
        self.timeout = zk.negotiated_timeout
        #: Sending time (trio clock) of the last request the ensemble answered.
        self.last_ok = trio.current_time() if since is None else since
        self.kill_deadline = self.last_ok + KILL_FRACTION * self.timeout

    async def _probe(self, lost: list[str]) -> None:
        interval = max(0.02, PROBE_FRACTION * self.timeout)
        while not lost:
            sent = trio.current_time()
            try:
                stat = await self.zk.exists(self.node_path)
            except ZkError:
                if self.zk.state.is_terminal:
                    lost.append(f"session {self.zk.state.value}")
                    return
                await trio.sleep(interval)
                continue
            if stat is None or stat.ephemeral_owner != self.zk.session_id:
                lost.append(f"{self.node_path} is gone")
                return
            self.last_ok = sent
            await trio.sleep_until(sent + interval)

    async def wait_lost(self) -> str:
        """Return the reason once the node must be taken as lost."""
        lost: list[str] = []
        states = self.zk.subscribe_state()
        async with trio.open_nursery() as nursery:
            async def until_silent() -> None:
                while not lost:
                    due = self.last_ok + TERM_FRACTION * self.timeout
                    if trio.current_time() >= due:
                        lost.append(f"no answer from the ensemble for "
                                    f"{trio.current_time() - self.last_ok:.1f}s")
                        return
                    await trio.sleep_until(due)

            async def until_terminal() -> None:
                if not self.zk.state.is_terminal:
                    async for state in states:
                        if state.is_terminal:
                            break
                lost.append(f"session {self.zk.state.value}")

            async def watch(task: Any) -> None:
                await task()
                nursery.cancel_scope.cancel()

            async def probe() -> None:
                await self._probe(lost)
                nursery.cancel_scope.cancel()
            nursery.start_soon(probe)
            nursery.start_soon(watch, until_terminal)
            if self.strict:
                nursery.start_soon(watch, until_silent)
        # Strict: measured from the last answer, so the command is dead before the session
        # can expire. Otherwise the command gets the same grace from now.
        self.kill_deadline = (self.last_ok + KILL_FRACTION * self.timeout if self.strict else
                              trio.current_time() + (KILL_FRACTION - TERM_FRACTION) * self.timeout)
        return lost[0] if lost else "lost"


class Registration:
    """An ephemeral member `DIR/NAME` (data DATA) for as long as this session lives.

    `party=True` names it the way kazoo's Party does (`<uuid hex>__party__`, data = NAME), so
    `kazoo.recipe.party.Party(DIR)` counts it."""

    def __init__(self, zk: ZkClient, directory: str, name: str, data: bytes, *,
                 party: bool = False) -> None:
        self.zk = zk
        self.directory = directory.rstrip("/") or "/"
        self.name = uuid.uuid4().hex + PARTY_MARK if party else name
        self.data = data
        self.node_path = join_path(self.directory, self.name)

    async def join(self, on_wait: Callable[[int], None] | None = None) -> str:
        """Create the member node. If an ephemeral node of that name is still there from an
        earlier session (a restart after a crash, before that session expired), wait for it
        to go; a persistent one is an error (NodeExistsError)."""
        await ensure_path(self.zk, self.directory)
        while True:
            try:
                return await self.zk.create(self.node_path, self.data, ephemeral=True)
            except NodeExistsError:
                gone = trio.Event()

                def wake(_event: WatchedEvent) -> None:
                    gone.set()
                stat = await self.zk.exists(self.node_path, watch=wake)
                if stat is None:
                    continue
                if not stat.ephemeral_owner:
                    raise
                if stat.ephemeral_owner == self.zk.session_id:
                    return self.node_path
                if on_wait is not None:
                    on_wait(stat.ephemeral_owner)
                await gone.wait()

    async def leave(self) -> None:
        if self.zk.state is ClientState.CONNECTED:
            try:
                await self.zk.delete(self.node_path)
            except ZkError:
                pass
