"""The JSON-RPC front end: request lines in, response lines out, no I/O.

The request's shape is checked here, by hand (jsonrpcserver's jsonschema check costs more
than the rest of a dispatch together), then the call goes to :func:`zeusd.core.calls.start`
and its result or error is made into a response with jsonrpcserver's ``Request``, ``Success``,
``Error``, ``to_response`` and ``to_serializable_one``. Its ``dispatch`` functions are not
used: they cost about three times what this module's whole ``handle_line`` does, and its
``async_dispatch`` runs on asyncio.

``handle`` does all of its synchronous work (parse, check, validate, queue GPU work)
before returning. What is left is an awaitable the connection runs in its own task. Replies
come back unencoded: a batch of large results (256 ``rpc.discover`` are 5 MB of JSON) is
encoded member by member with :func:`reply_parts`, only as fast as its client takes it.
``handle_line`` is the same with the reply encoded at once, for callers that want bytes.
``steps`` is ``handle`` one request at a time, pausing between a batch's members, for a
connection that lets other users go first in between (``server/turns.py``).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
from collections.abc import Awaitable, Generator, Iterator, Mapping
from typing import Any

import trio
from jsonrpcserver import Error, Result, Success
from jsonrpcserver.dispatcher import to_response
from jsonrpcserver.request import Request
from jsonrpcserver.response import ErrorResponse, serialize_error, to_serializable_one
from jsonrpcserver.sentinels import NOID

from zeusd.core.calls import lookup, start
from zeusd.core.context import Context
from zeusd.core.errors import INVALID_REQUEST, PARSE_ERROR, ZeusdError
from zeusd.core.later import Later
from zeusd.core.session import Session
from zeusd.core.spec import MethodSpec
from zeusd.logfmt import MAX_QUOTED_CHARS, clip
from zeusd.rpc.openrpc import with_rpc_discover
from zeusd.stream.outbox import PowerSample

log = logging.getLogger(__name__)

#: A reply before encoding: one response object, a batch's responses, or a ready line.
Message = dict[str, Any] | list[dict[str, Any]] | bytes
#: What handle returns: a message to send now, nothing, or work to await first.
Pending = Message | None | Awaitable[Message | None]
#: What handle_line returns: bytes to send now, nothing, or work to await first.
Reply = bytes | None | Awaitable[bytes | None]
_Member = dict[str, Any] | None | Awaitable[dict[str, Any] | None]

_REQUEST_KEYS = frozenset({"jsonrpc", "method", "params", "id"})


def encode(message: Any) -> bytes:
    """One compact JSON line."""
    # allow_nan=False: a reply must be JSON even if a value went non-finite somewhere.
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def error_message(code: int, message: str, data: Any, id: Any = None) -> dict[str, Any]:
    return serialize_error(ErrorResponse(code, message, data, id))


def parse_error(reason: str) -> bytes:
    return encode(error_message(PARSE_ERROR, "Parse error", reason))


class _PowerJson:
    """The JSON of the ``power_mw`` last rendered. A poller's round hands every subscriber
    of the same devices the same values object: it is encoded once, not once per line."""

    def __init__(self) -> None:
        # The object itself is held, so an identity match is never another object's.
        self._values: object = None
        self._json = b""

    def of(self, values: dict[str, Any]) -> bytes:
        if values is not self._values:
            self._json = json.dumps(values, separators=(",", ":"), allow_nan=False).encode()
            self._values = values
        return self._json


_power_json = _PowerJson()


def notification_line(sample: PowerSample) -> bytes:
    """A subscription's sample as its ``gpu.power`` / ``cpu.power`` notification line.

    The same bytes as ``encode`` of the notification object, made from the parts.
    """
    return b"".join(
        (
            b'{"jsonrpc":"2.0","method":"',
            sample.kind.encode(),
            b'.power","params":{"subscription":',
            json.dumps(sample.subscription).encode(),
            b',"timestamp_ms":%d,"power_mw":' % sample.timestamp_ms,
            _power_json.of(sample.power_mw),
            b"}}\n",
        )
    )


def _encode_member(message: dict[str, Any]) -> bytes:
    """One response as compact JSON (no newline); a result JSON cannot carry becomes -32603."""
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError):  # a handler returned something JSON cannot carry
        log.exception("cannot serialize a response")
        error = error_message(-32603, "Internal error", "unserializable result")
        error["id"] = message.get("id")
        return json.dumps(error, separators=(",", ":")).encode()


def encode_reply(message: Message | None) -> bytes | None:
    """The whole line of *message* at once (None stays None)."""
    if message is None or isinstance(message, bytes):
        return message
    if isinstance(message, dict):
        return _encode_member(message) + b"\n"
    return b"".join(reply_parts(message))


def reply_parts(message: Message) -> Iterator[bytes]:
    """The line of *message* in pieces, each encoded only when asked for: one piece per
    batch member, so a large batch never sits in memory as one big line."""
    if isinstance(message, bytes):
        yield message
    elif isinstance(message, dict):
        yield _encode_member(message) + b"\n"
    else:
        separator = b"["
        for member in message:
            yield separator + _encode_member(member)
            separator = b","
        yield b"]\n"


def _shape_problem(obj: dict[str, Any]) -> str | None:
    """Why *obj* is not a JSON-RPC 2.0 request object, or None."""
    if obj.get("jsonrpc") != "2.0":
        return "'jsonrpc' must be exactly \"2.0\""
    if not isinstance(obj.get("method"), str):
        return "'method' must be a string"
    extra = obj.keys() - _REQUEST_KEYS
    if extra:
        return f"unexpected member {sorted(extra)[0]!r}"
    if "params" in obj and not isinstance(obj["params"], dict | list):
        return "'params' must be an object or an array"
    return None


def _valid_id(value: Any) -> bool:
    # bool is an int subclass but not a JSON number; 1e400 parses as inf, which JSON lacks.
    kind = type(value)
    return value is None or kind is str or kind is int or (kind is float and math.isfinite(value))


class Dispatcher:
    """Turns request lines into response lines. One per daemon; holds no per-line state."""

    def __init__(
        self, methods: Mapping[str, MethodSpec], context: Context, max_batch: int = 256
    ) -> None:
        self._methods = with_rpc_discover(methods)
        self._context = context
        self._max_batch = max_batch

    def handle_line(self, line: bytes, session: Session) -> Reply:
        """Process one line from *session*'s connection; see :data:`Reply`."""
        pending = self.handle(line, session)
        if isinstance(pending, Later):
            return pending.then(_encode_done)
        if inspect.isawaitable(pending):
            return self._encode_later(pending)
        return encode_reply(pending)

    @staticmethod
    async def _encode_later(pending: Awaitable[Message | None]) -> bytes | None:
        return encode_reply(await pending)

    def handle(self, line: bytes, session: Session) -> Pending:
        """Process one line from *session*'s connection; see :data:`Pending`."""
        steps = self.steps(line, session)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    def steps(self, line: bytes, session: Session) -> Generator[None, None, Pending]:
        """:meth:`handle`, one request at a time: it pauses (yields) after each member of a
        batch but the last, so that the caller may let other connections go in between."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return parse_error(f"not UTF-8: {exc.reason} at byte {exc.start}")
        if not text.strip():
            return None  # blank lines are allowed between requests
        try:
            doc = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            return parse_error(f"not JSON: {exc}" if isinstance(exc, ValueError) else "too deep")

        if not isinstance(doc, list):
            return self._start(doc, session)
        if not doc:
            return encode(error_message(INVALID_REQUEST, "Invalid Request", "empty batch"))
        if len(doc) > self._max_batch:
            # Refused whole, before any member runs: a half-run batch is worse than none.
            reason = f"batch of {len(doc)} requests; at most {self._max_batch} are accepted"
            return encode(error_message(INVALID_REQUEST, "Invalid Request", reason))
        members: list[_Member] = []
        try:
            for member in doc:
                if members:
                    yield
                members.append(self._start(member, session))
        except GeneratorExit:  # cut off at a stop, between two members
            log.warning(
                "a batch cut off by the stop: %d request(s) started and not answered, %d abandoned",
                len(members),
                len(doc) - len(members),
            )
            raise
        return self._reply_batch(members)

    # -- one request -----------------------------------------------------------------------

    def _start(self, obj: Any, session: Session) -> _Member:
        if not isinstance(obj, dict):
            return error_message(INVALID_REQUEST, "Invalid Request", "not a JSON object")
        req_id = obj.get("id", NOID)
        if req_id is not NOID and not _valid_id(req_id):
            return error_message(
                INVALID_REQUEST, "Invalid Request", "'id' must be a string, number or null"
            )
        problem = _shape_problem(obj)
        if problem is not None:
            reply_id = None if req_id is NOID else req_id
            return error_message(INVALID_REQUEST, "Invalid Request", problem, reply_id)

        request = Request(obj["method"], obj.get("params", {}), req_id)
        try:
            value = start(
                self._context, session, lookup(self._methods, request.method), request.params
            )
        except ZeusdError as exc:
            return _respond(request, exc)
        if isinstance(value, Later):
            # Made in the device work's report, with no task waiting for it.
            return value.then(functools.partial(_respond_done, request))
        if inspect.isawaitable(value):
            return _finish(request, value)
        return _respond(request, value)

    # -- replies ---------------------------------------------------------------------------

    def _reply_batch(self, members: list[_Member]) -> Pending:
        if any(inspect.isawaitable(m) for m in members):
            return self._await_batch(members)
        return self._batch_message(members)  # type: ignore[arg-type]

    async def _await_batch(self, members: list[_Member]) -> Message | None:
        # Every member's GPU work is queued and runs on its own: awaiting in turn costs nothing.
        done: list[dict[str, Any] | None] = []
        try:
            for member in members:
                done.append(await member if inspect.isawaitable(member) else member)
        except trio.Cancelled:
            # Cut off at a stop: the member being awaited logged itself; close the rest.
            rest = [m for m in members[len(done) + 1 :] if inspect.isawaitable(m)]
            for member in rest:
                if inspect.iscoroutine(member):
                    _close_unstarted(member)
            if rest:
                log.warning(
                    "%d more request(s) of a batch abandoned: the daemon stopped", len(rest)
                )
            raise
        return self._batch_message(done)

    @staticmethod
    def _batch_message(members: list[dict[str, Any] | None]) -> Message | None:
        responses = [m for m in members if m is not None]
        return responses or None


def _encode_done(done: Later[Message | None]) -> bytes | None:
    return encode_reply(done.get())


def _respond_done(request: Request, done: Later[Any]) -> dict[str, Any] | None:
    try:
        value = done.get()
    except ZeusdError as exc:
        return _respond(request, exc)
    return _respond(request, value)


async def _finish(request: Request, pending: Awaitable[Any]) -> dict[str, Any] | None:
    try:
        value = await pending
    except ZeusdError as exc:
        return _respond(request, exc)
    except trio.Cancelled:
        log.warning(
            "request %s (id %r) abandoned: the daemon stopped", clip(request.method), request.id
        )
        raise
    return _respond(request, value)


def _close_unstarted(coroutine: Any) -> None:
    """Close a coroutine that never ran, and the coroutines it was handed (its request's
    work), so that none is reported as never awaited."""
    frame = coroutine.cr_frame
    inner = [v for v in (frame.f_locals.values() if frame else ()) if inspect.iscoroutine(v)]
    coroutine.close()
    for value in inner:
        _close_unstarted(value)


def _respond(request: Request, outcome: Any) -> dict[str, Any] | None:
    """The response object for *outcome* (a result value or a ZeusdError); None for a
    notification, whose failure is logged instead."""
    if request.id is NOID:
        if isinstance(outcome, ZeusdError):
            # Method names and error data echo the client: quoted clipped and escaped.
            log.warning(
                "notification %s failed: %s (%d) %s",
                clip(request.method),
                outcome.message,
                outcome.code,
                clip(outcome.data, 2 * MAX_QUOTED_CHARS),
            )
        return None
    result: Result = (
        Error(outcome.code, outcome.message, outcome.data)
        if isinstance(outcome, ZeusdError)
        else Success(outcome)
    )
    return to_serializable_one(to_response(request, result))  # type: ignore[return-value]
