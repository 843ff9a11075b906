"""Handlers of the cpu-read methods and of power subscriptions (subscribe, unsubscribe)."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Any

from zeusd.core.context import Context
from zeusd.core.errors import InvalidParamsError
from zeusd.core.params import check_int, show
from zeusd.core.session import Session
from zeusd.stream.hub import (
    MAX_INTERVAL_MS,
    MIN_INTERVAL_MS,
    PowerHub,
    SubscriptionLimitError,
)


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidParamsError(name, f"'{name}' must be true or false (got {show(value)})")
    return value


def _start(
    ctx: Context,
    hub: PowerHub | None,
    session: Session,
    kind: str,
    devices: Iterable[int],
    interval: object,
) -> dict[str, Any]:
    targets = tuple(devices)
    interval_ms = check_int("interval_ms", interval, MIN_INTERVAL_MS, MAX_INTERVAL_MS)
    if hub is None or not targets:
        raise InvalidParamsError(f"{kind}_ids", f"this node has no {kind.upper()}s to stream")
    limit = ctx.max_subscriptions_per_connection
    if len(session.subscriptions) >= limit:
        raise InvalidParamsError(
            f"{kind}_ids",
            f"this connection has {limit} subscriptions, the most allowed "
            f"(--max-subscriptions-per-connection {limit}); unsubscribe one first",
        )
    try:
        sub_id = hub.subscribe(targets, interval_ms, session.outbox)
    except SubscriptionLimitError as exc:
        raise InvalidParamsError(
            f"{kind}_ids", f"{exc} (--max-subscriptions {exc.limit}); try again later"
        ) from None
    outbox = session.outbox
    outbox.register(sub_id)

    def end() -> None:
        hub.unsubscribe(sub_id)
        outbox.drop(sub_id)

    session.subscriptions[sub_id] = end
    return {"subscription": sub_id}


def subscribe_gpu_power(
    ctx: Context, session: Session, gpu_ids: object, interval_ms: object
) -> dict[str, Any]:
    targets = [gpu.index for gpu in ctx.gpus.resolve(gpu_ids)]
    return _start(ctx, ctx.gpu_power, session, "gpu", targets, interval_ms)


def subscribe_cpu_power(
    ctx: Context, session: Session, cpu_ids: object, interval_ms: object
) -> dict[str, Any]:
    targets = [cpu.id for cpu in ctx.cpus.resolve(cpu_ids)]
    return _start(ctx, ctx.cpu_power, session, "cpu", targets, interval_ms)


def unsubscribe(ctx: Context, session: Session, subscription: object) -> bool:
    if not isinstance(subscription, str):
        raise InvalidParamsError(
            "subscription", f"'subscription' must be a string (got {show(subscription)})"
        )
    end = session.subscriptions.pop(subscription, None)
    if end is None:
        raise InvalidParamsError(
            "subscription", f"no subscription {show(subscription)} on this connection"
        )
    end()
    return True


def cpu_cumulative_energy(
    ctx: Context, session: Session, cpu_ids: object, cpu: object, dram: object
) -> dict[str, Any]:
    targets = ctx.cpus.resolve(cpu_ids)
    want_cpu, want_dram = _flag("cpu", cpu), _flag("dram", dram)
    return ctx.cpus.cumulative_energy(targets, cpu=want_cpu, dram=want_dram)


def cpu_power(ctx: Context, session: Session, cpu_ids: object) -> Awaitable[dict[str, Any]]:
    return ctx.cpus.power(ctx.cpus.resolve(cpu_ids))
