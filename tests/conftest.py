"""Shared fixtures: small real checkpoints and a throwaway PostgreSQL, made once per test session;
fresh journals per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from aruntime.durable.journal import SqlJournal


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-style tiny demo checkpoint (random seeded weights, real BPE tokenizer)."""
    from aruntime.engine.demo import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("tiny-llama"), size="tiny")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen2-style tiny checkpoint: q/k/v projections with bias."""
    from aruntime.engine.demo import write_demo_model

    return write_demo_model(
        tmp_path_factory.mktemp("tiny-qwen"), size="tiny", architecture="Qwen2ForCausalLM"
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server for the session (run as `nobody` when tests run as root)."""
    from pg_server import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlJournal]:
    """A fresh, empty journal of each backend: a new SQLite file, or a new PostgreSQL database
    on the session's server (the server starts only when a postgres case runs)."""
    from aruntime.durable.journal import SqliteJournal

    j: SqlJournal
    if request.param == "sqlite":
        j = SqliteJournal(tmp_path / "journal.db")
    else:
        from pg_server import fresh_database

        from aruntime.durable.journal_pg import PostgresJournal

        j = PostgresJournal(fresh_database(request.getfixturevalue("postgres_url")))
    yield j
    j.close()
