"""Where a study lives: a SQLite file on one machine (the default), a PostgreSQL server for many.

Both are Optuna's ``RDBStorage``, with its heartbeat: every running trial's worker writes a
heartbeat every ``heartbeat`` seconds; a trial whose heartbeat is older than twice that (its
worker was SIGKILLed, or its machine died) is marked failed by the next worker that starts a trial,
and its settings are queued again (``RetryHeartbeatStaleTrialCallback``, up to :data:`MAX_RETRY`
times). SQLite rather than Optuna's journal file for the default: the journal storage has no
heartbeat, so a killed worker's trial would stay "running" for ever; SQLite serialises writers
with file locks, which is safe for several processes on one machine's disk (not on NFS: use
PostgreSQL across machines), and a study's writes are a few small rows per trial.

PostgreSQL goes through psycopg 3 (``psycopg[binary]``, the ``tune`` extra): a plain
``postgresql://`` URL is given that driver explicitly, since SQLAlchemy's default for it changed
from psycopg2 (2.0) to psycopg (2.1).
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path

from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from gem_lightning.errors import UserInputError

TABLE_RACE_ATTEMPTS = 5
"""Tries at opening a new database whose tables another worker is creating at the same instant."""
MAX_RETRY = 3
"""How many times the settings of a trial whose worker died (or was stopped) are run again."""
DRIVERS = {"postgresql": "'psycopg[binary]'", "mysql": "pymysql (and mysql+pymysql://)"}


def default_storage(study_dir: Path) -> str:
    """The study's SQLite file in its folder."""
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Queues a failed trial's settings again as a new trial (its ``system_attrs`` say which it retries)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def _rdb_storage(url: str, connect_args: dict, heartbeat: int) -> RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat_interval
        return RDBStorage(
            url,
            engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True},
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=retry_callback(),
        )


def database_url(url: str) -> str:
    """``url`` as SQLAlchemy should read it: a plain ``postgresql://`` names psycopg 3; refused in one line if it is no URL."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserInputError(
            f"--tune.storage {url!r} is not a database URL: give sqlite:///<path>.db (one machine) or "
            "postgresql://<user>:<password>@<host>:<port>/<database> (many machines)."
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def open_storage(url: str, heartbeat: int) -> RDBStorage:
    """The storage at ``url`` (as the user gave it: :func:`database_url`), its tables created if new; an
    unreachable one is one line naming it."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(database_url(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"timeout": 60} if backend == "sqlite" else {"connect_timeout": 10} if backend == "postgresql" else {}
    for attempt in range(TABLE_RACE_ATTEMPTS):
        try:
            return _rdb_storage(parsed.render_as_string(hide_password=False), connect_args, heartbeat)
        except ImportError:
            raise UserInputError(
                f"--tune.storage {shown(url)}: its driver is not installed: pip install {DRIVERS.get(backend, 'it')}."
            ) from None
        except sqlalchemy.exc.SQLAlchemyError as error:
            if not (lost_table_race(error) and attempt + 1 < TABLE_RACE_ATTEMPTS):
                reason = " ".join(str(getattr(error, "orig", None) or error).split())
                raise UserInputError(f"--tune.storage {shown(url)}: cannot use it: {reason}") from None
            time.sleep(random.uniform(0.5, 2.0))  # another worker is creating them: they will be there
    raise AssertionError("unreachable: the last attempt returns or raises")


def lost_table_race(error: Exception) -> bool:
    """Whether creating Optuna's tables failed because another worker created them at the same instant
    (the tasks of an array starting on a fresh database: optuna/optuna#1092); trying again finds them made."""
    import sqlalchemy

    return isinstance(error, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError) or "already exists" in str(error)


def shown(url: str) -> str:
    """``url`` with its password hidden, for messages and logs."""
    import sqlalchemy

    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def dashboard_command(url: str) -> str:
    """The command that opens Optuna's web dashboard on the study's storage (password hidden: type it in)."""
    return f"pip install optuna-dashboard && optuna-dashboard '{shown(database_url(url))}'"
