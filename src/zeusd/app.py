"""Wiring: build the backend, dispatcher and server from a Config, and run them."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import attrs
import trio

from zeusd import __version__
from zeusd.config import Config
from zeusd.core.context import Context
from zeusd.core.cpus import CpuTable
from zeusd.core.gpu_commands import GpuTable
from zeusd.core.methods import build_methods
from zeusd.core.policy import Policy
from zeusd.core.session import Session
from zeusd.core.spec import API_GROUPS, CPU_READ
from zeusd.cpu.rapl import RaplCpu, RaplUnavailableError, open_rapl
from zeusd.gpu.amdsmi_backend import AmdsmiBackend
from zeusd.gpu.backend import NvmlBackend, NvmlCallError
from zeusd.gpu.choose import OPENERS, BackendError, open_auto
from zeusd.gpu.device import GpuBackend
from zeusd.gpu.lanes import GpuLanes
from zeusd.gpu.ledger import SettingsLedger
from zeusd.gpu.overrides import OverriddenBackend, OverridesError, load_overrides
from zeusd.gpu.records import RecordStore, StateDirError
from zeusd.http.routes import HttpFrontEnd
from zeusd.metrics.collector import ZeusdCollector
from zeusd.metrics.exporter import Exporter
from zeusd.metrics.gauges import GpuGauges
from zeusd.metrics.tally import Tally
from zeusd.recovery import recover
from zeusd.rpc.dispatch import Dispatcher
from zeusd.server import listeners
from zeusd.server.daemon import Server, stop_on_signals
from zeusd.server.listeners import StartupError
from zeusd.sim import SimAmdsmi, SimConfigError, SimNvml, default_sim_gpus, load_sim_config
from zeusd.stream.hub import MIN_INTERVAL_MS, PowerHub, SubscriptionBudget
from zeusd.stream.sources import CpuPowerSource, GpuPowerSource, GpuReadingsSource

log = logging.getLogger(__name__)
#: The readiness line goes through its own logger, which cli.py keeps at INFO whatever
#: --log-level says: scripts and tests wait for it.
ready_log = logging.getLogger("zeusd.ready")


def open_backend(config: Config) -> GpuBackend:
    """Initialise the GPU library (real or simulated), read every GPU, and put the command
    overrides in front of it. Raises StartupError."""
    try:
        # First, so that an unsafe or broken file is refused before any GPU is touched.
        overrides = (
            load_overrides(config.gpu_command_overrides)
            if config.gpu_command_overrides is not None
            else None
        )
        backend = _open_library(config)
    except (SimConfigError, OverridesError, BackendError) as exc:
        raise StartupError(str(exc)) from exc
    if overrides is None:
        return backend
    log.info("gpu-control through site commands for: %s", ", ".join(overrides))
    return OverriddenBackend(backend, overrides)


def _open_library(config: Config) -> GpuBackend:
    if config.gpu_backend == "auto":
        return open_auto()
    if config.gpu_backend != "sim":
        return OPENERS[config.gpu_backend]()
    vendor = config.sim_vendor
    specs = (
        load_sim_config(config.sim_config, vendor)
        if config.sim_config
        else default_sim_gpus(config.sim_gpus, vendor)
    )
    sim: SimAmdsmi | SimNvml
    backend: GpuBackend
    try:
        if vendor == "amd":
            sim = SimAmdsmi(specs)
            backend = AmdsmiBackend.open(sim, name="sim")
        else:
            sim = SimNvml(specs, state_file=config.sim_state)
            backend = NvmlBackend.open(sim, name="sim")
    except NvmlCallError as exc:
        raise BackendError(f"cannot initialise the simulated GPUs: {exc}") from exc
    sim.arm()  # latency and faults apply to requests, not to start-up
    return backend


def enabled_groups(config: Config) -> tuple[tuple[str, ...], tuple[RaplCpu, ...]]:
    """The API groups to serve and the RAPL CPUs. Raises StartupError for a group named in
    --enable that this node cannot serve."""
    cpus: tuple[RaplCpu, ...] = ()
    wanted = API_GROUPS if config.enable is None else config.enable
    if CPU_READ in wanted:
        try:
            cpus = open_rapl(config.rapl_root)
        except RaplUnavailableError as exc:
            if config.enable is not None:
                raise StartupError(f"--enable {CPU_READ}: {exc}") from None
            log.info("%s disabled: %s", CPU_READ, exc)
            wanted = tuple(g for g in wanted if g != CPU_READ)
    return tuple(g for g in API_GROUPS if g in wanted), cpus


def interval_ms(hz: float) -> int:
    """Milliseconds between samples at *hz* (the HTTP streams' --*-power-poll-hz)."""
    return max(MIN_INTERVAL_MS, round(1000 / hz))


def _nothing() -> None:
    pass


def _session_closed(context: Context, session: Session) -> None:
    context.ledger.close_session(
        session.id, session.restore_on_close, context.lanes, context.devices
    )


def open_state_dir(config: Config) -> RecordStore | None:
    """Open and lock --state-dir. Raises StartupError."""
    if config.state_dir is None:
        return None
    # Every directory on the way is checked like the socket's: nobody else may swap them.
    try:
        parent_fd, _ = listeners.open_socket_dir(config.state_dir, "state dir")
    except StartupError as exc:
        raise StartupError(f"--state-dir {config.state_dir}: {exc}") from None
    try:
        return RecordStore.open(config.state_dir, parent_fd)
    except StateDirError as exc:
        raise StartupError(str(exc)) from None
    finally:
        os.close(parent_fd)


def _queue_exit_restores(context: Context, everything: bool, sessions: list[Session]) -> None:
    """At shutdown: close the open sessions' changes on every GPU (restoring those that
    asked for it), or with --restore-on-exit put back everything changed since start-up."""
    context.ledger.queue_exit_restores(
        context.lanes,
        context.devices,
        [(s.id, s.restore_on_close) for s in sessions],
        everything=everything,
    )


def trio_wall_clock() -> Callable[[], float]:
    """Unix time that advances with trio's clock, so that a virtual clock moves it in tests."""
    offset = time.time() - trio.current_time()
    return lambda: offset + trio.current_time()


@attrs.frozen
class Running:
    """Handed to whoever started the daemon: where it listens and how to stop it."""

    address: str
    server: Server
    context: Context


async def serve(
    config: Config,
    backend: GpuBackend,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen and serve until stopped. Raises StartupError before ``started``."""
    groups, cpus = enabled_groups(config)
    store = open_state_dir(config)
    tally = Tally()
    try:
        if store is not None:
            # Before any connection can arrive: undo what a crashed daemon promised to.
            tally = Tally(restores=await trio.to_thread.run_sync(recover, store, backend))
        await _serve(config, backend, groups, cpus, store, tally, handle_signals, task_status)
    finally:
        if store is not None:
            left = list(store.names())
            if left:
                log.warning(
                    "%d restore record(s) stay in %s for the next start: %s",
                    len(left),
                    store.path,
                    ", ".join(left),
                )
            store.close()


async def _serve(
    config: Config,
    backend: GpuBackend,
    groups: tuple[str, ...],
    cpus: tuple[RaplCpu, ...],
    store: RecordStore | None,
    tally: Tally,
    handle_signals: bool,
    task_status: trio.TaskStatus[Running],
) -> None:
    workers = config.num_workers
    if config.gpu_command_overrides is not None:
        # A site command may take up to its timeout_s in its GPU's lane thread: with a
        # thread for every GPU, one that hangs can never keep another GPU waiting.
        workers = max(workers, len(backend.devices))
    lanes = GpuLanes(
        len(backend.devices),
        trio.CapacityLimiter(workers),
        max_queued=config.max_queued_per_gpu,
        max_queued_per_owner=config.max_queued_per_client,
    )
    cpu_table = CpuTable(cpus)
    # One budget for both hubs: --max-subscriptions counts GPU and CPU subscriptions.
    budget = SubscriptionBudget(config.max_subscriptions)
    gpu_power = PowerHub(
        "gpu",
        GpuPowerSource(backend.devices, lanes),
        range(len(backend.devices)),
        budget,
    )
    cpu_power = PowerHub("cpu", CpuPowerSource(cpus), (cpu.id for cpu in cpus), budget)
    # The metrics' own poller (power, energy, limit in one lane job a GPU), polling only
    # while scrapes come; its one subscription is not a client's (a budget of its own).
    gpu_ids = range(len(backend.devices))
    readings = PowerHub(
        "gpu-metrics", GpuReadingsSource(backend.devices, backend.infos, lanes), gpu_ids
    )
    gauges = GpuGauges(readings, gpu_ids)
    context = Context(
        version=__version__,
        backend=backend.name,
        gpus=GpuTable(backend.infos),
        devices=backend.devices,
        lanes=lanes,
        policy=Policy(
            enabled_groups=groups,
            token_key=config.token_key,
            # A token on a Unix socket is optional (it can only narrow what the peer's uid may
            # do); TCP has no peer identity, so there it is required.
            token_transports=frozenset({"tcp"}) if config.token_key is not None else frozenset(),
            control_uids=config.control_uids,
            control_gids=config.control_gids,
            wall_clock=trio_wall_clock(),
        ),
        cpus=cpu_table,
        gpu_power=gpu_power,
        cpu_power=cpu_power,
        max_subscriptions_per_connection=config.max_subscriptions_per_connection,
        ledger=SettingsLedger(
            store,
            [info.uuid for info in backend.infos],
            restore_on_exit=config.restore_on_exit,
            on_restore=tally.restored,
        ),
        observer=tally,
    )
    methods = build_methods()
    dispatcher = Dispatcher(methods, context, config.max_batch)
    http = HttpFrontEnd(
        context,
        methods,
        dispatcher,
        gpu_interval_ms=interval_ms(config.gpu_power_poll_hz),
        cpu_interval_ms=interval_ms(config.cpu_power_poll_hz),
        metrics=Exporter(ZeusdCollector(backend.infos, gauges, tally, cpus), gauges),
    )
    on_closed: Callable[[], None] = _nothing
    socket_file: listeners.UnixSocketFile | None = None
    mode = config.mode
    inherited = listeners.inherited_listener()
    if inherited is not None:
        # Socket activation: systemd owns the socket (and its file); never remove it.
        listener = inherited
        mode = listeners.transport_of(listener)
        log.info("using the socket passed by systemd; --mode and address flags are ignored")
    elif config.mode == "uds":
        listener, socket_file = await listeners.open_unix_listener(
            config.socket_path, config.socket_permissions, config.socket_uid, config.socket_gid
        )
        on_closed = socket_file.remove
    else:
        listener = await listeners.open_tcp_listener(config.tcp_host, config.tcp_port)
    # Not getsockname() for our own socket: it is bound through /proc/self/fd (bind_in).
    address = listeners.describe(listener) if socket_file is None else f"unix:{socket_file.path}"
    server = Server(
        dispatcher,
        lanes,
        config.max_line_bytes,
        mode,
        max_connections=config.max_connections,
        max_in_flight=config.max_in_flight,
        client_timeout=config.client_timeout,
        auth_timeout=config.auth_timeout if context.policy.requires_token(mode) else None,
        on_session_closed=lambda session: _session_closed(context, session),
        before_lanes_close=lambda sessions: _queue_exit_restores(
            context, config.restore_on_exit, sessions
        ),
        http=http,
        observer=tally,
    )
    try:
        async with trio.open_nursery() as nursery:
            if handle_signals:
                # Catch signals before announcing readiness, so none can kill us uncleanly.
                await nursery.start(stop_on_signals, server)
            # The hubs sleep on an event while nobody subscribes; they end with the nursery.
            await nursery.start(gpu_power.run)
            await nursery.start(cpu_power.run)
            await nursery.start(readings.run)
            await nursery.start(gauges.run)
            await nursery.start(cpu_table.track_wraps)
            await nursery.start(server.run, listener, on_closed)
            count = len(backend.devices)
            ready_log.info(
                "zeusd %s listening on %s (%s backend, %d GPU%s, %d RAPL CPU%s; groups %s)",
                __version__,
                address,
                backend.name,
                count,
                "" if count == 1 else "s",
                len(cpus),
                "" if len(cpus) == 1 else "s",
                ",".join(groups) or "none",
            )
            task_status.started(Running(address, server, context))
            await server.wait_stopped()
            nursery.cancel_scope.cancel()  # the signal watcher runs forever otherwise
    finally:
        on_closed()
