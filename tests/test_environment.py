"""Where a command's servers come from (flag > environment > running embedded ones), and
SIGTERM turned into a clean stop: fast, no server started (the folders hold none)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import pytest

from mqlab.lab.environment import Servers, find, given
from mqlab.lab.interrupts import sigterm_as_ctrl_c
from mqlab.lab.services import postgres_server
from mqlab.lab.services.manager import ServicesError, running_urls
from mqlab.settings import Settings


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return monkeypatch


def test_settings_from_env_reads_the_two_urls_and_names_what_is_missing() -> None:
    env = {"REDIS_URL": "redis://r", "HOME": "/root"}
    settings = Settings.from_env(env)
    assert settings == Settings("redis://r", "")
    assert settings.missing == ["PostgreSQL"]
    assert Settings.from_env({}).missing == ["Redis", "PostgreSQL"]
    assert Settings.from_env(Settings("redis://a", "postgresql://b").to_env()) == Settings(
        "redis://a", "postgresql://b"
    )
    assert settings.filled_from(Settings("redis://other", "postgresql://p")) == Settings(
        "redis://r", "postgresql://p"
    )


def test_a_flag_wins_over_the_environment(no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv("REDIS_URL", "redis://env")
    no_env.setenv("DATABASE_URL", "postgresql://env")
    assert given("redis://flag") == Settings("redis://flag", "postgresql://env")
    assert given() == Settings("redis://env", "postgresql://env")


def test_nothing_to_talk_to_says_what_is_missing_and_how_to_get_it(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ServicesError) as both:
        find(base=tmp_path)
    assert "no Redis and no PostgreSQL to talk to" in str(both.value)
    assert "mqlab services up" in str(both.value)
    assert "REDIS_URL / DATABASE_URL" in str(both.value)
    no_env.setenv("REDIS_URL", "redis://env")
    with pytest.raises(ServicesError, match="no PostgreSQL to talk to"):
        find(base=tmp_path)


def test_servers_named_are_used_and_nothing_is_started(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_env.setenv("DATABASE_URL", "postgresql://env")
    with Servers("redis://flag", base=tmp_path) as settings:
        assert settings == Settings("redis://flag", "postgresql://env")
    assert not list(tmp_path.iterdir())  # no embedded server started there


def test_a_server_started_before_the_other_failed_is_stopped_at_once(
    no_env: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Starts a real Valkey (well under a second); PostgreSQL's start is made to fail."""
    base = tmp_path_factory.mktemp("half")

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no PostgreSQL today")

    no_env.setattr(postgres_server, "start", refuse)
    with pytest.raises(ServicesError, match="no PostgreSQL today"), Servers(base=base):
        pass
    assert running_urls(base) == (None, None)


def _previous(signum: int, frame: FrameType | None) -> None:
    raise AssertionError("the handler from before the block must not run inside it")


def test_sigterm_unwinds_like_ctrl_c_inside_and_the_handlers_come_back_after() -> None:
    before_term = signal.signal(signal.SIGTERM, _previous)
    before_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    unwound = []
    try:
        with pytest.raises(KeyboardInterrupt), sigterm_as_ctrl_c():
            try:
                signal.raise_signal(signal.SIGTERM)
            finally:
                unwound.append("finally")
        with pytest.raises(KeyboardInterrupt), sigterm_as_ctrl_c():
            # Started with SIGINT ignored (a script's background job), kill -INT still stops.
            signal.raise_signal(signal.SIGINT)
        assert unwound == ["finally"]
        assert signal.getsignal(signal.SIGTERM) is _previous
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before_term)
        signal.signal(signal.SIGINT, before_int)
