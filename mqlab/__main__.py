"""`python -m mqlab ...`: the `mqlab` CLI (the supervisor spawns its children this way)."""

from __future__ import annotations

from mqlab.faces.cli import app

if __name__ == "__main__":
    app(prog_name="mqlab")
