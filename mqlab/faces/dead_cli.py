"""`mqlab dead list | show JOB | replay JOB... | replay --all | purge [--yes]`.

A typer sub-app, added to `mqlab` in mqlab/faces/cli.py; what they share is
mqlab.faces.cli_common. The servers are found as `mqlab status` finds them
(mqlab.lab.environment.find: flags, REDIS_URL / DATABASE_URL, the embedded ones running); the
work is mqlab.system.dead_letters', the tables mqlab.faces.dead_view's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import psycopg
import redis.asyncio as aioredis
import typer

from mqlab.faces.cli_common import HELP, DatabaseUrl, RedisUrl, console, err, fail, resolve
from mqlab.system import dead_letters
from mqlab.system.connections import both

T = TypeVar("T")

dead_app = typer.Typer(
    help="Dead jobs and dead letters: list, show, replay, purge.",
    no_args_is_help=True,
    **HELP,  # type: ignore[arg-type]
)

Backend = Callable[[aioredis.Redis, psycopg.AsyncConnection[Any]], Awaitable[T]]


def _run(redis_url: str | None, database_url: str | None, work: Backend[T]) -> T:
    """Run `work` on the servers found as `mqlab status` finds them; a clear error (exit 1)
    when one does not answer."""
    settings = resolve(redis_url, database_url)

    async def go() -> T:
        async with both(settings) as (client, conn):
            return await work(client, conn)

    try:
        return asyncio.run(go())
    except ConnectionError as exc:
        raise fail(str(exc)) from None


@dead_app.command("list", short_help="The dead jobs and the dead letters that are not jobs.")
def list_(
    limit: Annotated[
        int, typer.Option(metavar="N", help="Show at most N of each kind.", min=1)
    ] = 50,
    redis_url: RedisUrl = None,
    database_url: DatabaseUrl = None,
) -> None:
    """The dead jobs (newest first) and the dead letters that are not jobs."""
    from mqlab.faces.dead_view import render_list

    found = _run(
        redis_url, database_url, lambda client, conn: dead_letters.list_dead(client, conn, limit)
    )
    console.print(render_list(found, console.width))


@dead_app.command()
def show(
    # Described in the docstring: typer would print its type, <str>, beside it.
    job: Annotated[str, typer.Argument(metavar="JOB", show_default=False, hidden=True)],
    redis_url: RedisUrl = None,
    database_url: DatabaseUrl = None,
) -> None:
    """JOB (a job id), its order, every attempt and its dead letters."""
    from mqlab.faces.dead_view import render_story

    story = _run(redis_url, database_url, lambda client, conn: dead_letters.show(client, conn, job))
    if story is None:
        raise fail(f"no such job: {job!r}")
    console.print(render_story(story, console.width))


@dead_app.command(short_help="Queue dead jobs again: the ones named, or --all.")
def replay(
    jobs: Annotated[
        list[str] | None,
        # Described in the docstring: typer would print its type, <list[str]>, beside it.
        typer.Argument(metavar="JOB", show_default=False, hidden=True),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead job.")] = False,
    redis_url: RedisUrl = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Queue dead jobs again (each JOB, or --all), with their attempts counted afresh.

    Each is pending again and its message goes back on the queue; its entries leave the
    dead letters. A job that is not dead is left alone (replaying twice queues once). Exits
    1 when a job id is no job's.
    """

    if bool(jobs) == all_:
        # A usage error (exit 2, with the usage line), as click gives for a missing argument.
        raise typer.BadParameter("name the jobs to replay, or give --all (not both)")
    ids = None if all_ else list(jobs or [])
    done = _run(
        redis_url, database_url, lambda client, conn: dead_letters.replay(client, conn, ids)
    )
    if all_ and not done:
        console.print("No dead jobs to replay.")
    for result in done:
        name = repr(result.job_id)
        if result.outcome == "replayed":
            console.print(f"{name}: replayed (pending, queued again)", highlight=False)
        elif result.outcome == "not dead":
            console.print(f"{name}: not dead ({result.status}), left alone", highlight=False)
        else:
            err.print(f"[bold red]error:[/] {name}: no such job", highlight=False)
    if all_ and done:
        console.print(f"{len(done)} replayed.")
    if any(r.outcome == "no such job" for r in done):
        raise typer.Exit(1)


@dead_app.command(short_help="Delete the dead jobs with their orders; empty the dead letters.")
def purge(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    redis_url: RedisUrl = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Forget the dead for good: their orders, jobs and attempts, and every dead letter."""

    jobs, entries = _run(redis_url, database_url, dead_letters.counts)
    if not jobs and not entries:
        console.print("Nothing to purge: no dead job, no dead letter.")
        return
    question = (
        f"Delete {jobs} dead job(s) with their orders and attempts, and {entries} "
        "dead-letter entries?"
    )
    if not yes and not typer.confirm(question):
        raise typer.Exit(1)
    purged = _run(redis_url, database_url, dead_letters.purge)
    shown = ", ".join(str(i) for i in purged.orders[:10])
    more = f" and {len(purged.orders) - 10} more" if len(purged.orders) > 10 else ""
    which = f" (orders {shown}{more})" if purged.orders else ""
    console.print(
        f"Deleted {len(purged.orders)} dead job(s) with their orders and attempts{which}, "
        f"and {purged.entries} dead-letter entries.",
        highlight=False,
    )
