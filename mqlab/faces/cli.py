"""The `mqlab` command line."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from mqlab import __version__
from mqlab.experiments import available
from mqlab.faces.cli_common import HELP, DatabaseUrl, RedisUrl, console, env_default, fail, resolve
from mqlab.faces.dead_cli import dead_app
from mqlab.faces.link_cli import link
from mqlab.lab import services
from mqlab.lab.services.manager import ServicesError
from mqlab.procs import port_free
from mqlab.system.reconciler import DEFAULT_GRACE, ENV_GRACE
from mqlab.system.spec import WorkerSpec, flag_of
from mqlab.system.spec import kinds as spec_kinds
from mqlab.system.spec import options as spec_options

if TYPE_CHECKING:
    from collections.abc import Callable

    from mqlab.lab.services import ServiceInfo
    from mqlab.system.reconciler import ReconcileConfig

app = typer.Typer(
    name="mqlab",
    help="A terminal lab for the producer-consumer pattern (Kata 3: message queues + workers).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    **HELP,  # type: ignore[arg-type]
)
services_app = typer.Typer(
    help="The embedded Valkey (a Redis server) and PostgreSQL.",
    no_args_is_help=True,
    **HELP,  # type: ignore[arg-type]
)
app.add_typer(services_app, name="services")
app.add_typer(dead_app, name="dead")


def suites_said() -> str:
    """The suites in experiments/, for the help: "kata3, kata4 or scaling"."""
    names = available()
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def run_experiment_help() -> str:
    return (
        "Run experiments headless and write a report. Resets the data.\n\n"
        f"Each SUITE is {suites_said()} (experiments/NAME.toml) or a .toml path; without one, "
        "kata3. The report goes to experiments/results/ as markdown and JSON (latest.md is "
        "the newest)."
    )


def _print_version(value: bool) -> None:
    if value:
        console.print(f"mqlab {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Show the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """A terminal lab for the producer-consumer pattern (Kata 3: message queues + workers)."""


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def job_seconds_option(value: float | None) -> float | None:
    """--job-seconds: a finite, non-negative, sane number of seconds (nan and inf are not)."""
    from mqlab.system.work import check_job_seconds

    if value is None:
        return None
    try:
        return check_job_seconds(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _stop_before_start(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM or Ctrl-C before the worker runs: it holds nothing yet, so exit now, with 0
    (Python's default would be a KeyboardInterrupt traceback, or death by SIGTERM)."""
    raise SystemExit(0)


def _services(call: Callable[[], list[ServiceInfo]]) -> list[ServiceInfo]:
    """The servers as `call` (services.up, down or status) left them; its error, a clean exit."""
    try:
        return call()
    except ServicesError as exc:
        raise fail(str(exc)) from None


def _print_services(infos: list[ServiceInfo]) -> None:
    from mqlab.lab.services.view import services_table

    console.print(services_table(infos), crop=False)  # URLs whole: see UrlLines


@services_app.command("up", short_help="Start the servers (or reuse them); apply the schema.")
def services_up(
    listen: Annotated[
        str | None,
        typer.Option(
            metavar="ADDR",
            help="Also serve other hosts on this private address of this machine (password "
            "logins only; refused for a wildcard or a public address). `mqlab services env "
            "--remote` prints the URLs for them.",
        ),
    ] = None,
) -> None:
    """Start the embedded Valkey and PostgreSQL (or reuse them if they run) and apply the schema."""
    _print_services(_services(lambda: services.up(owned=False, listen=listen)))
    console.print("Stop them with [bold]mqlab services down[/].")


@services_app.command("down")
def services_down() -> None:
    """Stop the embedded servers."""
    infos = _services(services.down)
    if not infos:
        console.print("No embedded servers were running.")
        return
    _print_services(infos)


@services_app.command("status")
def services_status() -> None:
    """Each embedded server's state, URL, pid, version and health."""
    infos = _services(services.status)
    _print_services(infos)
    if any(i.state == "stale" for i in infos):
        console.print("A stale record (its server had died) was cleaned.")


@services_app.command("env", short_help="Print the servers' URLs as export lines, for eval.")
def services_env(
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="The URLs for other hosts (on the address of `services up --listen`).",
        ),
    ] = False,
) -> None:
    """Print `export REDIS_URL=...` and `export DATABASE_URL=...` (TCP) for the running
    embedded servers. Then, for instance:

    \b
      eval "$(mqlab services env)"
      redis-cli -u "$REDIS_URL"
      psql "$DATABASE_URL"

    The URLs carry the servers' passwords (kept in MQLAB_HOME/home.json, 0600).
    """
    infos = {i.name: i for i in _services(services.status) if i.state == "running"}
    if set(infos) != {"redis", "postgres"}:
        raise fail("the embedded servers are not running: `mqlab services up` starts them")
    if remote and not (infos["redis"].remote_url and infos["postgres"].remote_url):
        raise fail(
            "the embedded servers serve this machine only: start them with "
            "`mqlab services up --listen ADDR` (after `mqlab services down`)"
        )
    redis_url, database_url = (
        (infos["redis"].remote_url, infos["postgres"].remote_url)
        if remote
        else (infos["redis"].tcp_url, infos["postgres"].tcp_url)
    )
    print(f"export REDIS_URL={redis_url}")
    print(f"export DATABASE_URL={database_url}")


@app.command()
def api(
    host: Annotated[
        str, typer.Option(metavar="HOST", help="Interface to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(metavar="PORT", help="Port to listen on.", min=1, max=65535)
    ] = 3000,
    pool_size: Annotated[
        int, typer.Option(metavar="N", help="PostgreSQL connections.", min=1)
    ] = 20,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    header_timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            min=0.001,
            help="A request's headers must arrive within this (from the connection's opening "
            "or the request's first byte), else 408 and the connection is closed.",
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            min=0.001,
            help="A request's body must arrive within this after its headers, else 408 and "
            "the connection is closed.",
        ),
    ] = 10.0,
    keep_alive: Annotated[
        float,
        typer.Option(metavar="SECONDS", min=0.001, help="An idle connection is closed after this."),
    ] = 5.0,
    max_connections: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=1,
            help="Open connections at most; one more gets a 503 and is closed. Default: what "
            "fits under the open-file limit (ulimit -n) beside the PostgreSQL and Valkey "
            "connections, at most 1000.",
        ),
    ] = None,
    redis_url: RedisUrl = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Run the HTTP API (the producer) on http://HOST:PORT."""
    import uvicorn

    from mqlab.db import apply_schema
    from mqlab.system.api import create_app
    from mqlab.system.api.http_limits import (
        DEFAULT_MAX_CONNECTIONS,
        ConnectionLimits,
        fd_budget,
        limited_protocol,
    )

    host_name = _checked_environment()
    setup_logging()
    budget = fd_budget(pool_size)
    if budget < 1 or (max_connections or 0) > budget:
        raise fail(
            f"the open-file limit (ulimit -n) leaves room for {max(budget, 0)} connections "
            f"beside {pool_size} PostgreSQL and {2 * pool_size} Valkey ones: raise it, or "
            "lower --max-connections or --pool-size."
        )
    limits = ConnectionLimits(
        header_seconds=header_timeout,
        body_seconds=body_timeout,
        max_connections=max_connections or min(budget, DEFAULT_MAX_CONNECTIONS),
    )
    settings = resolve(redis_url, database_url)
    if not port_free(port, host):
        raise fail(
            f"port {port} on {host} is taken (another `mqlab api`?). Stop that process "
            f"(`ss -ltnp 'sport = :{port}'` shows it) or use --port."
        )
    try:
        apply_schema(settings.database_url)
    except Exception as exc:  # the API still starts, and answers 503 until PostgreSQL is back
        logging.getLogger("mqlab.system.api").warning("could not apply the schema: %s", exc)
    logging.getLogger("mqlab.system.api").info(
        "API on http://%s:%d (docs at /docs), host %s", host, port, host_name
    )
    uvicorn.run(
        create_app(settings, pool_size=pool_size),
        host=host,
        port=port,
        loop="uvloop",
        http=limited_protocol(limits),
        timeout_keep_alive=keep_alive,  # type: ignore[arg-type]  # an int in its hints only
        access_log=access_log,
        log_level="info" if access_log else "warning",
        timeout_graceful_shutdown=5,
    )


def worker(redis_url: RedisUrl = None, database_url: DatabaseUrl = None, **options: object) -> None:
    """Run one worker (a consumer). Ctrl-C once: finish the job and exit; twice: hand it back."""
    import uvloop

    from mqlab.db import apply_schema
    from mqlab.system.spec import SpecError, WorkerSpec
    from mqlab.system.worker import serve

    try:
        spec = WorkerSpec.from_options(options)
    except SpecError as exc:
        raise fail(str(exc)) from None
    _reconcile_config()  # a bad MQLAB_RECONCILE_* is said here, not as a traceback later
    _checked_environment()
    # Until serve() hands them to the worker's loop: applying the schema can wait on a
    # PostgreSQL that is away, and a stop then must not wait for it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_before_start)
    setup_logging()
    settings = resolve(redis_url, database_url)
    try:
        apply_schema(settings.database_url)
    except Exception as exc:  # the worker waits and reconnects until PostgreSQL is back
        logging.getLogger("mqlab.system.worker").warning("could not apply the schema: %s", exc)
    raise typer.Exit(uvloop.run(serve(settings, spec)))


def _worker_parameters() -> inspect.Signature:
    """`mqlab worker`'s options: one per WorkerSpec field (mqlab.system.spec), as its metadata
    describes it, then the servers' URLs."""
    kinds = spec_kinds(WorkerSpec)
    params = []
    for f in spec_options():
        flag = f.metadata["flag"]
        kind = kinds[f.name]
        option = typer.Option(
            flag_of(f),
            metavar=flag.metavar,
            help=flag.help + (env_default(flag.env, flag.env_default) if flag.env else ""),
            show_default=flag.show_default,
            # typer's own "Invalid value" for a job time, as the other commands' --job-seconds.
            callback=job_seconds_option if f.name == "job_seconds" else None,
        )
        annotation = Annotated[kind | None if f.default is None else kind, option]  # type: ignore[valid-type]
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=annotation
            )
        )
    for name, annotation in (("redis_url", RedisUrl), ("database_url", DatabaseUrl)):
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
            )
        )
    return inspect.Signature(params)


# typer reads a command's options from its signature: this one's from the spec's fields.
worker.__signature__ = _worker_parameters()  # type: ignore[attr-defined]
app.command()(worker)


@app.command()
def status(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds between refreshes.", min=0.1)
    ] = 1.0,
    redis_url: RedisUrl = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Queue depth, each worker, and the orders by status."""
    from mqlab.faces.status_view import show

    settings = resolve(redis_url, database_url)
    try:
        asyncio.run(show(settings, console, watch=watch, interval=interval))
    except KeyboardInterrupt:
        pass
    except ConnectionError as exc:
        raise fail(str(exc)) from None


def _reconcile_config() -> ReconcileConfig:
    from mqlab.system.reconciler import ReconcileConfig, ReconcilerError

    try:
        return ReconcileConfig.from_env()
    except ReconcilerError as exc:
        raise fail(str(exc)) from None


def _checked_environment() -> str:
    """The settings `mqlab api` and `mqlab worker` read from the environment, checked before
    anything starts (a bad value is said, no traceback): MQLAB_PG_PREPARE, and MQLAB_HOST,
    whose host name (else the machine's, mqlab.system.host) it returns."""
    from mqlab.db import prepare_threshold
    from mqlab.system.host import HostError, host_name

    try:
        prepare_threshold()
        return host_name()
    except (HostError, ValueError) as exc:
        raise fail(str(exc)) from None


#: `mqlab reconcile` lists at most this many requeued jobs.
RECONCILE_SHOWN = 20


@app.command(short_help="Queue again what PostgreSQL expects to run and Redis lost.")
def reconcile(
    grace: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Only jobs in their state this long. "
            + env_default(ENV_GRACE, f"{DEFAULT_GRACE:g}"),
        ),
    ] = None,
    redis_url: RedisUrl = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Queue again the jobs PostgreSQL has as pending, retrying or processing that no Redis
    structure holds and no live worker works (after Redis lost its data): one run of what the
    workers run every few seconds. It waits a few seconds for a worker's run in progress."""
    import psycopg

    from mqlab.backend_errors import REDIS_FAILURE
    from mqlab.system.reconciler import (
        CLI_WAIT,
        LockBusy,
        ReconcilerError,
        check_seconds,
        reconcile_now,
    )

    setup_logging(logging.ERROR)  # what it did is printed below, not logged as well
    config = _reconcile_config()
    try:
        seconds = config.grace if grace is None else check_seconds("--grace", grace)
    except ReconcilerError as exc:
        raise typer.BadParameter(str(exc), param_hint="--grace") from None
    settings = resolve(redis_url, database_url)
    try:
        result = asyncio.run(reconcile_now(settings.redis_url, settings.database_url, seconds))
    except LockBusy as exc:
        raise fail(f"{exc} and did not finish within {CLI_WAIT:g} s; try again") from None
    except REDIS_FAILURE as exc:
        raise fail(f"Redis failed: {exc}") from None
    except psycopg.Error as exc:
        raise fail(f"PostgreSQL failed: {exc}") from None
    console.print(
        f"checked {result.checked} job(s) pending, retrying or processing for over {seconds:g} s "
        f"({result.took:.3f} s); {result.found} held by no Redis structure and no live worker",
        highlight=False,
    )
    if not result.requeued:
        why = (
            "nothing was missing from Redis"
            if not result.found
            else f"the {result.found} missing were claimed or finished meanwhile"
        )
        console.print(f"requeued 0: {why}", highlight=False)
        return
    console.print(f"requeued {len(result.requeued)}:", highlight=False)
    for job_id in result.requeued[:RECONCILE_SHOWN]:
        console.print(f"  {job_id}", highlight=False, markup=False)
    if len(result.requeued) > RECONCILE_SHOWN:
        console.print(f"  and {len(result.requeued) - RECONCILE_SHOWN} more", highlight=False)


@app.command("run-experiment", help=run_experiment_help())
def run_experiment(
    suites: Annotated[
        list[str] | None,
        # Described in the docstring: typer would print its type, <list[str]>, beside it.
        typer.Argument(metavar="SUITE", show_default=False, hidden=True),
    ] = None,
    job_seconds: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Run every row at this job time (expected times scale).",
            show_default="each row's own",
            callback=job_seconds_option,
        ),
    ] = None,
    repeat: Annotated[
        int, typer.Option(metavar="N", help="Runs per row; the median is reported.", min=1)
    ] = 1,
    out: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Where reports go.", show_default="experiments/results"),
    ] = None,
    redis_url: RedisUrl = None,
    database_url: DatabaseUrl = None,
) -> None:
    from mqlab.faces.experiment_cli import run

    setup_logging(logging.WARNING)
    code = run(suites or ["kata3"], job_seconds, repeat, out, redis_url, database_url, console)
    raise typer.Exit(code)


@app.command()
def reset(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    redis_url: RedisUrl = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Empty the orders, jobs and queues: the lab's clean slate."""
    from mqlab.system.resetting import reset_all

    settings = resolve(redis_url, database_url)
    if not yes and not typer.confirm("Delete all orders, jobs and queued messages?"):
        raise typer.Exit(1)
    reset_all(settings)
    console.print("Orders, jobs and queues are empty.")


@app.command(short_help="The live lab: fire orders, scale workers, run experiments.")
def tui(
    workers: Annotated[
        int, typer.Option(metavar="N", help="Workers to start with.", min=0, max=64)
    ] = 1,
    job_seconds: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Job time of the workers; the experiments table runs at it too (expected "
            "times scale).",
            show_default="the kata's 2 s",
            callback=job_seconds_option,
        ),
    ] = None,
    suite: Annotated[
        str,
        typer.Option(
            metavar="SUITE", help=f"The experiments table: {suites_said()}, or a .toml file."
        ),
    ] = "kata3",
    redis_url: RedisUrl = None,
    database_url: DatabaseUrl = None,
) -> None:
    """The live lab: fire orders, add, stop or kill workers, run the experiments.

    It starts the stack (embedded servers unless --redis-url / --database-url, the API and
    the workers), and stops what it started when it exits.
    """
    from mqlab.experiments import ExperimentError
    from mqlab.faces.tui.main import run

    try:
        code = run(workers, job_seconds, suite, redis_url, database_url)
    except ExperimentError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code)


@app.command(short_help="Measure the API, the drain rate and the dispatch latency.")
def bench(
    seconds: Annotated[
        float, typer.Option(metavar="SECONDS", help="Length of each POST /orders phase.", min=0.5)
    ] = 5.0,
    jobs: Annotated[int, typer.Option(metavar="N", help="Jobs per drain phase.", min=1)] = 3000,
    json_path: Annotated[
        str | None,
        typer.Option("--json", metavar="FILE", help="Also write the figures as JSON to this file."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Allow emptying the Redis and PostgreSQL given.")
    ] = False,
    redis_url: RedisUrl = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Measure POST /orders, the drain rate and the dispatch latency.

    Each figure is shown beside its target.

    Without --redis-url / --database-url it runs its own embedded servers in a temporary
    folder; the API and the workers are its children. Nothing is left running after it.
    """
    from pathlib import Path

    from mqlab.lab.bench import run

    out = Path(json_path) if json_path else None
    raise typer.Exit(
        run(
            seconds=seconds,
            jobs=jobs,
            json_path=out,
            redis_url=redis_url,
            database_url=database_url,
            yes=yes,
        )
    )


app.command(short_help="A TCP proxy on a lab host's path: delay, cut, heal.")(link)
