"""`mqlab link --route LISTEN=UPSTREAM ... --control SOCKET`: run a link (mqlab.lab.hosts.link),
the TCP proxy on a lab host's path to the servers. The lab starts one in each host's network
namespace and steers it through the control socket (mqlab.lab.hosts.link_control)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from mqlab.faces.cli_common import fail
from mqlab.lab.hosts.link import Link, LinkError, Route, check_delay
from mqlab.private_files import UnsafePath

log = logging.getLogger("mqlab.lab.hosts.link")


def _routes(values: list[str]) -> list[Route]:
    """--route: each LISTEN=UPSTREAM well formed, and no LISTEN twice."""
    try:
        routes = [Route.parse(value) for value in values]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    listens = [route.listen for route in routes]
    twice = sorted({str(a) for a in listens if listens.count(a) > 1})
    if twice:
        raise typer.BadParameter(f"{', '.join(twice)} is given twice: one route per LISTEN")
    return routes


def _milliseconds(value: float) -> float:
    """--delay-ms, --jitter-ms: from 0 to a minute (nan and inf are not)."""
    try:
        return check_delay(value, 0)[0]
    except ValueError as exc:
        raise typer.BadParameter(str(exc).replace("delay_ms ", "")) from None


def _stop_before_start(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM or Ctrl-C before the link's loop handles them: nothing is open yet; exit 0."""
    raise SystemExit(0)


def link(
    route: Annotated[
        list[str],
        typer.Option(
            "--route",
            metavar="LISTEN=UPSTREAM",
            help="Forward connections to LISTEN (host:port, loopback or private) to UPSTREAM, "
            "e.g. 127.0.0.1:6380=10.200.0.1:40000. Give it once per server.",
            callback=_routes,
        ),
    ],
    control: Annotated[
        Path,
        typer.Option(
            metavar="SOCKET",
            help="The control socket to create (0600), in a 0700 folder of yours: one JSON "
            'request per line, e.g. {"op": "set", "delay_ms": 5}, {"op": "cut"}, '
            '{"op": "heal"}, {"op": "stats"}.',
        ),
    ],
    delay_ms: Annotated[
        float,
        typer.Option(
            metavar="MS",
            help="Delay each chunk by MS milliseconds, each way.",
            callback=_milliseconds,
        ),
    ] = 0,
    jitter_ms: Annotated[
        float,
        typer.Option(
            metavar="MS",
            help="Vary each chunk's delay by up to ±MS (uniformly; never below 0, never "
            "reordering).",
            callback=_milliseconds,
        ),
    ] = 0,
    seed: Annotated[
        int | None,
        typer.Option(metavar="N", help="Seed the jitter, for a run that can be repeated."),
    ] = None,
) -> None:
    """Run a link: a TCP proxy that can delay, cut and heal (toxiproxy-style).

    Prints 'link ready: ROUTES' once every route listens and the control socket answers;
    stops, closing every connection, on SIGTERM or Ctrl-C.
    """
    import uvloop

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_before_start)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    routes: list[Route] = route  # type: ignore[assignment]  # the callback parsed them
    try:
        uvloop.run(_serve(Link(routes, delay_ms, jitter_ms, seed), control))
    except (LinkError, UnsafePath, OSError) as exc:
        raise fail(str(exc)) from None


async def _serve(link: Link, control: Path) -> None:
    """Listen, answer on `control`, say so, and run until SIGTERM or SIGINT."""
    from mqlab.lab.hosts.link_control import ask, serve_control

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server: asyncio.Server | None = None
    try:
        await link.start()
        server = await serve_control(link, control)
        if (await ask(control, {"op": "stats"})).get("ok") is not True:
            raise LinkError(f"the control socket {control} does not answer as it should")
        print(f"link ready: {' '.join(str(r) for r in link.routes)}", flush=True)
        await stop.wait()
        log.info("stopping: %s", link.stats())
    finally:
        await link.close()
        if server is not None:
            server.close()
            control.unlink(missing_ok=True)  # ours: made by serve_control in a private folder
