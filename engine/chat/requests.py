"""Turns from every frontend, written by the one loaded model in a fair order, several at once when they can.

A llama.cpp context belongs to one thread (docs/ARCHITECTURE.md, decision 2), but the window, the
terminal and the local API may all want a reply at once. Each asks by submitting a turn; the
thread that owns the model calls `step`, which writes every running turn one event further in
turn, and starts waiting turns between those rounds. The next turn comes from the frontend
served least recently, so one frontend that sends many requests cannot starve another; within a
frontend, first come first served.

A turn starts beside the running ones only if it and all of them can share the model (`joins`:
the local API's requests write in sequences of their own, engine.runtime.batch) and its `joins`
says yes to them; otherwise it waits until they end, and the turns behind it wait too, so a turn
that must run alone (one that loads another model) is never passed over for ever.

A frontend on the model's own thread reads the events `step` returns. One on another thread
(the API) reads its ticket's `events()`, which the queue fills as they happen.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from engine.chat.assistant import Turn
from engine.errors import Busy, InternalError
from engine.events import Event, Failed
from engine.paths import folders

log = logging.getLogger(__name__)

_ENDED = None  # put in a ticket's channel after its last event
# Whether a waiting turn may start beside the running ones (given); asked on the model's thread.
Joins = Callable[[Sequence["TurnTicket"]], bool]


def _ended() -> Turn:
    yield from ()


class TurnTicket:
    """One frontend's turn: waiting for the model, being written, or ended."""

    def __init__(self, frontend: str, conversation_id: str, start: Callable[[threading.Event], Turn],
                 joins: Joins | None = None, *, alongside: bool = False) -> None:
        self.frontend = frontend
        self.conversation_id = conversation_id
        self.joins = joins  # None: it runs alone
        self.alongside = alongside  # it writes in a sequence of its own (not the chat's) when it runs beside others
        self.stop_requested = threading.Event()  # set from any thread; the turn ends within one token
        self.ended = threading.Event()
        self._start = start
        self._turn: Turn | None = None
        self._channel: queue.SimpleQueue[Event | None] = queue.SimpleQueue()

    def stop(self) -> None:
        """End this turn within one token, or before it starts if it is still waiting; any thread."""
        self.stop_requested.set()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """This turn's events as they happen, for a frontend on another thread than the model's.
        `timeout` bounds the wait for each event (queue.Empty when it passes)."""
        while (event := self._channel.get(timeout=timeout)) is not _ENDED:
            yield event

    def _next(self) -> Event | None:
        if self._turn is None:
            self._turn = self._start(self.stop_requested)
        try:
            return next(self._turn)
        except StopIteration:
            return None

    def _close(self) -> None:
        if self._turn is not None:
            self._turn.close()  # a turn closed early keeps its reply so far, as stopped
        self.ended.set()
        self._channel.put(_ENDED)


@dataclass(frozen=True)
class Step:
    """What one call to `TurnQueue.step` produced."""

    events: tuple[tuple[TurnTicket, Event], ...]
    ended: tuple[TurnTicket, ...]


class TurnQueue:
    def __init__(self, *, limit: int = 32) -> None:
        self.limit = limit  # waiting turns at most; more is refused with `Busy`
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._waiting: dict[str, deque[TurnTicket]] = {}  # per frontend, in the order they were sent
        self._served: list[str] = []  # frontends, least recently served first
        self._running: list[TurnTicket] = []
        self.on_submitted: Callable[[], None] = lambda: None  # wakes the model's thread; called on the caller's

    def submit(self, frontend: str, conversation_id: str, start: Callable[[threading.Event], Turn],
               joins: Joins | None = None, *, alongside: bool = False) -> TurnTicket:
        """Queue a turn; `start(stop)` makes its events on the model's thread when its time comes
        (beside the running turns when `joins` says so; see the module's comment)."""
        with self._lock:
            if self._count() >= self.limit:
                raise Busy(f"{self.limit} replies are already waiting for the model.",
                           hint="Try again when some of them are written.")
            ticket = TurnTicket(frontend, conversation_id, start, joins, alongside=alongside)
            self._waiting.setdefault(frontend, deque()).append(ticket)
            if frontend not in self._served:
                self._served.append(frontend)
            self._work.notify_all()
        self.on_submitted()
        return ticket

    def busy(self, frontend: str | None = None) -> bool:
        """Whether a turn (of `frontend`, or of anyone) is running or waiting."""
        return any(frontend is None or t.frontend == frontend for t in self._tickets())

    def writing_in(self, conversation_id: str) -> bool:
        """Whether a turn in this conversation is running or waiting."""
        return any(t.conversation_id == conversation_id for t in self._tickets())

    def stop(self, frontend: str) -> None:
        """Stop every turn of `frontend`, the one being written and those waiting; any thread."""
        for ticket in self._tickets():
            if ticket.frontend == frontend:
                ticket.stop()

    def run(self, ticket: TurnTicket, clock: Callable[[], float]) -> Iterator[Event]:
        """On the model's thread: write turns until `ticket`'s has ended, yielding its events as they
        come (turns queued before it, by any frontend, are written first)."""
        while not ticket.ended.is_set():
            for owner, event in self.step(0.0, clock).events:
                if owner is ticket:
                    yield event

    def wait_for_work(self, timeout: float) -> bool:
        """Block the model's thread until a turn is waiting (True) or `timeout` passes (False)."""
        with self._work:
            return self._work.wait_for(lambda: bool(self._running) or self._count() > 0, timeout)

    def step(self, seconds: float, clock: Callable[[], float]) -> Step:
        """On the model's thread: write the running turns for about `seconds`, one event of each in
        turn (at least one round), starting waiting turns between rounds. Every event also goes to
        its ticket's `events()`."""
        deadline = clock() + seconds
        events: list[tuple[TurnTicket, Event]] = []
        ended: list[TurnTicket] = []
        while running := self._admit():
            for ticket in running:
                event = self._advance(ticket)
                if event is None:
                    self._end(ticket)
                    ended.append(ticket)
                else:
                    ticket._channel.put(event)
                    events.append((ticket, event))
            if clock() >= deadline:
                break
        return Step(tuple(events), tuple(ended))

    @staticmethod
    def _advance(ticket: TurnTicket) -> Event | None:
        try:
            return None if ticket.stop_requested.is_set() and ticket._turn is None else ticket._next()
        except Exception:  # a bug in the turn: it ends with the bug reported, and the others go on
            log.exception("a turn in conversation %s failed", ticket.conversation_id)
            ticket._turn = _ended()
            return Failed(InternalError("Something went wrong inside Cleo while replying.",
                                        hint=f"The details are in the log in {folders().logs}."))

    def close(self) -> None:
        """Stop every turn (the running ones keep their replies so far); for closing the profile."""
        tickets = self._tickets()
        with self._lock:
            self._waiting.clear()
            self._running = []
        for ticket in tickets:
            ticket.stop()
            ticket._close()

    def _admit(self) -> list[TurnTicket]:
        """Start the waiting turns that may start now, in the fair order; the running turns."""
        with self._lock:
            while (frontend := self._next_frontend()) is not None:
                head = self._waiting[frontend][0]
                alone = not self._running
                if not alone and not (head.joins is not None and all(t.joins is not None for t in self._running)
                                      and head.joins(tuple(self._running))):
                    break
                self._running.append(self._waiting[frontend].popleft())
                self._served.remove(frontend)
                self._served.append(frontend)  # served now: the others go first next time
                if alone:  # it may load another model as it starts: the others are asked once it has
                    break
            return list(self._running)

    def _next_frontend(self) -> str | None:
        return next((frontend for frontend in self._served if self._waiting.get(frontend)), None)

    def _end(self, ticket: TurnTicket) -> None:
        with self._lock:
            if ticket in self._running:
                self._running.remove(ticket)
        ticket._close()

    def _tickets(self) -> list[TurnTicket]:
        """The running turns, then the waiting ones."""
        with self._lock:
            waiting = list(itertools.chain.from_iterable(self._waiting.values()))
            return [*self._running, *waiting]

    def _count(self) -> int:
        return sum(len(waiting) for waiting in self._waiting.values())
