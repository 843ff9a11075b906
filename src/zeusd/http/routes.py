"""The HTTP front end: upstream zeusd's routes over the core's methods; no I/O.

Every route of a core method is made from the method table: ``gpu.set_power_limit`` is
``POST /gpu/set_power_limit``, a read is a ``GET``, its query string holds the params. The
call goes through :func:`zeusd.core.calls.start` as a JSON-RPC request does, so access
policy, validation, per-GPU ordering, audit and restore bookkeeping are the same. A reply is
an :class:`HttpResponse`, an awaitable of one (device work queued), or an
:class:`EventStream` (Server-Sent Events).

To add a route: ``front_end.router.add("GET", "/path", handler)``, where
``handler(request, session)`` returns a reply; raising a ZeusdError answers with its status.
``GET /metrics`` answers with what a :class:`Scrapable` (the metrics exporter, handed in by
the wiring) makes, to whoever may call gpu-read.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs

from zeusd import tokens
from zeusd.core.access import check_group
from zeusd.core.calls import start
from zeusd.core.context import Context
from zeusd.core.errors import (
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    AuthRequiredError,
    InternalError,
    InvalidParamsError,
    ZeusdError,
)
from zeusd.core.later import Later
from zeusd.core.session import Session
from zeusd.core.spec import API_GROUPS, GPU_CONTROL, GPU_READ, MethodSpec
from zeusd.http import sse
from zeusd.http.protocol import HttpRequest
from zeusd.http.query import flag, params_of, split_query
from zeusd.http.status import status_of
from zeusd.rpc.dispatch import Dispatcher
from zeusd.stream.outbox import PowerSample

log = logging.getLogger(__name__)

JSON = "application/json"
_UNAUTHORIZED = (("www-authenticate", 'Bearer realm="zeusd"'),)


@attrs.frozen
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    #: Work the client does not wait for (``block=false``): run after the response is sent.
    background: Awaitable[None] | None = attrs.field(default=None, eq=False)


@attrs.frozen(eq=False)
class EventStream:
    """A 200 ``text/event-stream``: each sample of *slots*, as *render* makes it."""

    slots: sse.SampleSlots
    render: Callable[[PowerSample], bytes]


Reply = HttpResponse | Awaitable[HttpResponse] | EventStream
Handler = Callable[[HttpRequest, Session], Reply]


class Scrapable(Protocol):
    """What ``GET /metrics`` answers with: a body, and its content type."""

    @property
    def content_type(self) -> str: ...

    async def scrape(self) -> bytes:
        """The exposition now; never waits on a GPU."""
        ...


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def error_body(code: int, message: str, data: Any) -> bytes:
    """``{"error": <JSON-RPC error object>}``."""
    return _encode({"error": {"code": code, "message": message, "data": data}})


def error_response(error: ZeusdError) -> HttpResponse:
    status = status_of(error)
    headers = _UNAUTHORIZED if status == 401 else ()
    return HttpResponse(status, _encode({"error": error.to_dict()}), headers=headers)


def ok(value: Any) -> HttpResponse:
    """A 200 whose body is *value* (a method's result) as JSON."""
    try:
        return HttpResponse(200, _encode(value))
    except (TypeError, ValueError) as exc:  # a handler returned something JSON cannot carry
        log.exception("cannot serialize a response")
        return error_response(InternalError(exc))


async def _answer(pending: Awaitable[Any]) -> HttpResponse:
    try:
        return ok(await pending)
    except ZeusdError as exc:
        return error_response(exc)


def _answer_done(done: Later[Any]) -> HttpResponse:
    """The response, made in the device work's report (see Later)."""
    try:
        return ok(done.get())
    except ZeusdError as exc:
        return error_response(exc)


async def _unawaited(name: str, pending: Awaitable[Any]) -> None:
    """A ``block=false`` write: like a JSON-RPC notification, a failure is only logged."""
    try:
        await pending
    except ZeusdError as exc:
        log.warning("notification %s failed: %s (%d) %s", name, exc.message, exc.code, exc.data)


@attrs.frozen
class Route:
    handler: Handler
    #: Whether the request's Bearer token is looked at (not on /discover and /time).
    reads_token: bool = True
    #: Whether the handler may change the session (POST /rpc): it gets its own copy, and
    #: what outlives the request (restore on close) is carried back to the connection.
    changes_session: bool = False


class RouteError(Exception):
    """No route for this request: the response says why (404, or 405 with Allow)."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


class Router:
    """Routes by path, then by HTTP method."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Route]] = {}

    def add(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        reads_token: bool = True,
        changes_session: bool = False,
    ) -> None:
        methods = self._routes.setdefault(path, {})
        if method in methods:
            raise ValueError(f"{method} {path} has a route already")
        methods[method] = Route(handler, reads_token, changes_session)

    @property
    def paths(self) -> list[str]:
        return list(self._routes)

    def find(self, method: str, path: str) -> Route:
        methods = self._routes.get(path)
        if methods is None:
            body = error_body(METHOD_NOT_FOUND, "Method not found", f"no route {path}")
            raise RouteError(HttpResponse(404, body))
        route = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        if route is None:
            allowed = ", ".join(sorted(methods))
            reason = f"{path} takes {allowed}, not {method}"
            body = error_body(INVALID_REQUEST, "Invalid Request", {"reason": reason})
            raise RouteError(HttpResponse(405, body, headers=(("allow", allowed),)))
        return route


def route_path(spec: MethodSpec) -> str:
    """``gpu.set_power_limit`` -> ``/gpu/set_power_limit``."""
    return "/" + spec.name.replace(".", "/")


class HttpFrontEnd:
    """Turns HTTP requests into replies. One per daemon; holds no per-request state."""

    def __init__(
        self,
        context: Context,
        methods: Mapping[str, MethodSpec],
        dispatcher: Dispatcher,
        *,
        gpu_interval_ms: int = 50,
        cpu_interval_ms: int = 100,
        metrics: Scrapable | None = None,
    ) -> None:
        self._context = context
        self._dispatcher = dispatcher
        self.router = Router()
        for name in ("discover", "time"):
            self.router.add("GET", f"/{name}", self._call(methods[name]), reads_token=False)
        for spec in methods.values():
            if spec.group in API_GROUPS and ".subscribe_" not in spec.name:
                method = "POST" if spec.group == GPU_CONTROL else "GET"
                self.router.add(method, route_path(spec), self._call(spec))
        self.router.add("GET", "/auth/whoami", self._whoami)
        self.router.add(
            "GET",
            "/gpu/stream_power",
            self._stream(
                methods["gpu.subscribe_power"], "gpu_ids", gpu_interval_ms, sse.gpu_events
            ),
        )
        self.router.add(
            "GET",
            "/cpu/stream_power",
            self._stream(
                methods["cpu.subscribe_power"], "cpu_ids", cpu_interval_ms, sse.cpu_events
            ),
        )
        self.router.add("POST", "/rpc", self._rpc, changes_session=True)
        if metrics is not None:
            self.router.add("GET", "/metrics", self._metrics(metrics))

    def handle(self, request: HttpRequest, connection: Session) -> Reply:
        """Answer *request* made on the connection whose session is *connection*."""
        try:
            route = self.router.find(request.method, request.path)
            session = connection
            if route.reads_token:
                session = self._session_for(request, connection, copy=route.changes_session)
            reply = route.handler(request, session)
        except RouteError as exc:
            return exc.response
        except ZeusdError as exc:
            return error_response(exc)
        if route.changes_session:
            return _carry_back(reply, session, connection)
        return reply

    def _session_for(self, request: HttpRequest, connection: Session, *, copy: bool) -> Session:
        """The session one request runs as: the connection's, with the request's token."""
        header = request.header("authorization")
        key = self._context.policy.token_key
        if header is None or key is None:
            # Without --token-key a token cannot be checked and is ignored, as upstream does.
            return attrs.evolve(connection) if copy else connection
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthRequiredError("the Authorization header must be 'Bearer <token>'")
        try:
            claims = tokens.verify(key, token.strip())
        except tokens.TokenError as exc:
            log.warning("%s: token refused: %s", connection.describe(), exc)
            raise AuthRequiredError(str(exc)) from None
        return attrs.evolve(
            connection,
            subject=claims.subject,
            scopes=claims.scopes,
            expires_at=claims.expires_at,
        )

    # -- routes ----------------------------------------------------------------------------

    def _call(self, spec: MethodSpec) -> Handler:
        write = spec.group == GPU_CONTROL
        context = self._context

        def handle(request: HttpRequest, session: Session) -> Reply:
            raw = split_query(request.query)
            block = flag(raw, "block", default=True) if write else True
            value = start(context, session, spec, params_of(spec, raw))
            if not inspect.isawaitable(value):
                return ok(value)
            if not block:
                return HttpResponse(200, background=_unawaited(spec.name, value))
            if isinstance(value, Later):
                return value.then(_answer_done)
            return _answer(value)

        return handle

    def _whoami(self, request: HttpRequest, session: Session) -> Reply:
        if self._context.policy.token_key is None:
            body = error_body(METHOD_NOT_FOUND, "Method not found", "this daemon has no tokens")
            return HttpResponse(404, body)
        split_query(request.query)  # refuses a malformed query
        if request.query:
            raise InvalidParamsError(
                request.query.partition("=")[0], "/auth/whoami takes no params"
            )
        if session.subject is None:
            raise AuthRequiredError("send the token as 'Authorization: Bearer <token>'")
        scopes = list(session.scopes or ())
        return ok({"sub": session.subject, "scopes": scopes, "exp": session.expires_at})

    def _stream(
        self,
        spec: MethodSpec,
        ids: str,
        interval_ms: int,
        render: Callable[[PowerSample], bytes],
    ) -> Handler:
        context = self._context

        def handle(request: HttpRequest, session: Session) -> Reply:
            raw = split_query(request.query)
            for key in raw:
                if key != ids:
                    raise InvalidParamsError(
                        key, f"unknown param '{key}' for this stream (accepted: {ids})"
                    )
            params = params_of(spec, raw) | {"interval_ms": interval_ms}
            slots = sse.SampleSlots()
            start(context, attrs.evolve(session, outbox=slots), spec, params)
            return EventStream(slots, render)

        return handle

    def _metrics(self, metrics: Scrapable) -> Handler:
        policy = self._context.policy

        def handle(request: HttpRequest, session: Session) -> Reply:
            check_group(policy, session, "/metrics", GPU_READ)
            given = split_query(request.query)
            if given:
                raise InvalidParamsError(next(iter(given)), "/metrics takes no params")
            return _scrape(metrics)

        return handle

    def _rpc(self, request: HttpRequest, session: Session) -> Reply:
        reply = self._dispatcher.handle_line(request.body, session)
        if reply is None or isinstance(reply, bytes):
            return _rpc_response(reply)
        return _rpc_later(reply)


async def _scrape(metrics: Scrapable) -> HttpResponse:
    return HttpResponse(200, await metrics.scrape(), metrics.content_type)


def _rpc_response(reply: bytes | None) -> HttpResponse:
    # Notifications only: nothing to answer.
    return HttpResponse(204) if reply is None else HttpResponse(200, reply)


async def _rpc_later(pending: Awaitable[bytes | None]) -> HttpResponse:
    return _rpc_response(await pending)


def _carry_back(reply: Reply, session: Session, connection: Session) -> Reply:
    """What a request changed that outlives it (restore on close) goes to the connection."""
    if isinstance(reply, HttpResponse | EventStream):
        connection.restore_on_close = session.restore_on_close
        return reply

    async def later() -> HttpResponse:
        response = await reply
        connection.restore_on_close = session.restore_on_close
        return response

    return later()
