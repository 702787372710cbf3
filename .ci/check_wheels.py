"""Fail if any installed distribution was compiled here instead of coming as a published wheel.

Run it with the venv's own Python. A wheel that pip built locally from an sdist carries a
bare platform tag (`linux_x86_64`), which no index accepts; published Linux wheels say
`manylinux…` or `musllinux…`, pure ones `none-any`. A distribution with no WHEEL file at all
was installed from source without a wheel.
"""

from __future__ import annotations

import sys
from collections import Counter
from importlib.metadata import distributions


def platform_tags(text: str) -> list[str]:
    return [line.split("-")[-1] for line in text.splitlines() if line.startswith("Tag: ")]


def main() -> int:
    built_here: list[str] = []
    kinds: Counter[str] = Counter()
    for dist in distributions():
        name = f"{dist.metadata['Name']} {dist.version}"
        wheel = dist.read_text("WHEEL")
        if wheel is None:
            built_here.append(f"{name}: no WHEEL file (installed from source)")
            continue
        tags = platform_tags(wheel)
        local = [t for t in tags if t.startswith("linux_")]
        if local or not tags:
            built_here.append(f"{name}: {', '.join(tags) or 'no tag'} (a wheel built here)")
        kinds.update({t.split("_")[0].rstrip("0123456789") for t in tags})
    print(f"{sys.implementation.name} {sys.version.split()[0]}: platform tags {dict(kinds)}")
    if built_here:
        print("compiled here, not installed from a published wheel:", *built_here, sep="\n  ")
        return 1
    print("every installed distribution came as a published wheel: nothing was compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
