"""The name of the host a process runs on: MQLAB_HOST when it is set, else the machine's.

The lab's hosts are Linux network namespaces of one machine (DESIGN.md, "Several hosts"):
they share its hostname, so a worker on `hosta` and one on `hostb` would both say the
machine's name. The lab sets MQLAB_HOST in each host's processes instead; the worker writes
it in its heartbeat (`host`) and its default id (`<host>-<pid>`), the API logs it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping

ENV_HOST = "MQLAB_HOST"
#: A DNS label's length and a hostname's characters, plus `_`: the name goes into worker ids
#: (`<host>-w3`) and log lines, where spaces, `:` or `/` would make them ambiguous.
_HOST = re.compile(r"[A-Za-z0-9._-]{1,63}")


class HostError(ValueError):
    """MQLAB_HOST is set to a name mqlab refuses; the text says why and what to do."""


def host_name(environ: Mapping[str, str] | None = None) -> str:
    """This process's host: MQLAB_HOST (1-63 characters of A-Z a-z 0-9 . _ -) when set,
    else socket.gethostname(). HostError when MQLAB_HOST is set to anything else (empty
    included: a variable set empty by mistake would silently name every host alike)."""
    env = os.environ if environ is None else environ
    name = env.get(ENV_HOST)
    if name is None:
        return socket.gethostname()
    if not _HOST.fullmatch(name):
        raise HostError(
            f"{ENV_HOST}={name!r} is not a host name: give 1 to 63 characters of "
            f"A-Z, a-z, 0-9, '.', '_' and '-' (or unset it to use this machine's name, "
            f"{socket.gethostname()!r})"
        )
    return name
