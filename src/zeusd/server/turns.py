"""Fair shares of the event loop's request handling between users.

A request is handled (parsed, checked, its GPU work queued) on the event loop with no
checkpoint, so that jobs enter each lane in the order requests were read. A user who keeps
many connections busy with big batches could then fill every scheduler round with that
work, and another client's line, and its reply, would each wait behind all of it (a write
took seconds during a read flood).

So a user (the peer's uid, else the token's subject, else "anonymous") may handle requests
for SLICE_S of loop time; after that, each of its connections takes a *turn* before its
next request (a batch is handled member by member, so a turn can come between two members).
Turns go one per scheduler round, round the users that wait, each user's connections first
come first served; a turn gives the user another SLICE_S. A user's share therefore does not
grow with its number of connections, a round holds about one slice of such a user's work,
and a user who needs little never waits for a turn at all.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable

import trio

from zeusd.core.session import Session

#: Loop time a user may spend handling requests before it has to take a turn.
SLICE_S = 0.001


def user_of(session: Session) -> Hashable:
    """Whose share a connection's requests use: its peer's uid, its token's subject, or
    nobody's in particular."""
    if session.uid is not None:
        return ("uid", session.uid)
    if session.subject is not None:
        return ("subject", session.subject)
    return ("anonymous",)


class Turns:
    """What each user has spent since its last turn, and who waits for one."""

    def __init__(self) -> None:
        self._spent: dict[Hashable, float] = {}
        # Taken from the moment a turn is given until its taker runs; meanwhile others queue.
        self._taken = False
        self._waiting: OrderedDict[Hashable, deque[trio.Event]] = OrderedDict()

    def due(self, user: Hashable) -> bool:
        """Whether *user* has to take a turn before handling its next request."""
        return self._spent.get(user, 0.0) >= SLICE_S

    def charge(self, user: Hashable, seconds: float) -> None:
        self._spent[user] = self._spent.get(user, 0.0) + seconds

    async def take(self, user: Hashable) -> None:
        """Wait for *user*'s turn (at least one scheduler round); it renews the user's share."""
        if self._taken:
            event = trio.Event()
            self._waiting.setdefault(user, deque()).append(event)
            try:
                await event.wait()
            except BaseException:
                if event.is_set():
                    self._give()  # ours already: it must not be lost
                else:
                    self._withdraw(user, event)
                raise
        else:
            self._taken = True
            await trio.lowlevel.cancel_shielded_checkpoint()  # let the round's others queue
        self._spent.pop(user, None)
        self._give()

    def _give(self) -> None:
        """Hand the turn to the first waiter of the user that has waited longest."""
        if not self._waiting:
            self._taken = False
            return
        user, queue = next(iter(self._waiting.items()))
        event = queue.popleft()
        if queue:
            self._waiting.move_to_end(user)  # its other connections wait for the next round
        else:
            del self._waiting[user]
        event.set()

    def _withdraw(self, user: Hashable, event: trio.Event) -> None:
        queue = self._waiting[user]
        queue.remove(event)
        if not queue:
            del self._waiting[user]
