"""The results store: plain SQL tables through SQLAlchemy 2.x (SQLite by default).

Tables: ``runs`` (one row per run, provenance and status), ``metrics`` (run, split, stage, name,
value), ``series`` (curves: run, name, step, value). Schema changes are numbered migrations,
recorded in ``forgetbench_migrations`` and applied one transaction each.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import socket
import sqlite3
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from forgetbench.errors import ForgetbenchError
from forgetbench.progress import periodically

log = logging.getLogger("forgetbench")

DB_ENV = "FORGETBENCH_DB"
DEFAULT_DB = "results.db"
STATUSES = ("running", "ok", "failed", "interrupted")
STALE_ERROR = "stale: process gone"
STALE_AFTER = timedelta(minutes=30)
HEARTBEAT_SECONDS = 60.0  # a running run's heartbeat, refreshed this often
# Any constant works: it only has to be the same in every process migrating one database.
PG_MIGRATION_LOCK = 0x666F7267

metadata = sa.MetaData()

migrations_table = sa.Table(
    "forgetbench_migrations",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(200), nullable=False, index=True),
    sa.Column("task_version", sa.String(50), nullable=False),
    sa.Column("methods", sa.String(500), nullable=False, index=True),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("config_hash", sa.String(64), nullable=False, index=True),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("model", sa.String(500), nullable=False),
    sa.Column("data_fingerprints", sa.JSON, nullable=False),
    sa.Column("versions", sa.JSON, nullable=False),
    sa.Column("git_sha", sa.String(64)),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("hostname", sa.String(200)),
    sa.Column("pid", sa.Integer),
    sa.Column("compute", sa.JSON),
    # migration 002: what the leaderboard compares, from the task's metadata
    sa.Column("family", sa.String(100)),
    sa.Column("prior_metric", sa.String(200)),
    sa.Column("new_metric", sa.String(200)),
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("split", sa.String(20), nullable=False),
    sa.Column("stage", sa.String(20), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("higher_is_better", sa.Boolean, nullable=False),
    sa.UniqueConstraint("run_id", "split", "stage", "name", name="uq_metric"),
)

series = sa.Table(
    "series",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Index("ix_series_run_name", "run_id", "name"),
)


def _m001_initial(connection: Connection) -> None:
    metadata.create_all(connection, tables=[runs, metrics, series])


# The runs columns migration 002 adds, and their value in rows written before it (every task
# then was single-label classification with accuracy as its main metric).
RUN_COLUMNS_002 = {
    "family": "text-classification",
    "prior_metric": "accuracy",
    "new_metric": "accuracy",
}


def _m002_main_metrics(connection: Connection) -> None:
    present = {column["name"] for column in sa.inspect(connection).get_columns("runs")}
    for name in RUN_COLUMNS_002:
        if name not in present:  # a store created after this change has them from 001
            column = runs.c[name]
            kind = column.type.compile(dialect=connection.dialect)
            connection.execute(sa.text(f"ALTER TABLE runs ADD COLUMN {name} {kind}"))
    for name, value in RUN_COLUMNS_002.items():
        connection.execute(runs.update().where(runs.c[name].is_(None)).values({name: value}))


def _view_metric(alias: str, split: str, stage: str, name: str) -> str:
    return (
        f"JOIN metrics {alias} ON {alias}.run_id = r.id AND {alias}.split = '{split}'"
        f" AND {alias}.stage = '{stage}' AND {alias}.name = {name}"
    )


# The leaderboard as a SQL view (``datasette results.db`` shows it): the latest ok run of each
# (task, config, seed), aggregated over seeds, of each task's current version only (that of its
# latest ok run), as ``latest_runs`` reads them. Portable SQL (SQLite has no standard deviation
# without its math extension), so the spread is min and max; ``forgetbench leaderboard`` adds
# std and confidence intervals.
LEADERBOARD_VIEW = f"""
CREATE VIEW leaderboard AS
SELECT r.task AS task, r.task_version AS task_version, r.methods AS methods,
    r.config_hash AS config_hash,
    r.prior_metric AS prior_metric, r.new_metric AS new_metric, COUNT(*) AS seeds,
    AVG(pa.value) AS prior_after_mean, MIN(pa.value) AS prior_after_min,
    MAX(pa.value) AS prior_after_max, AVG(na.value) AS new_after_mean,
    MIN(na.value) AS new_after_min, MAX(na.value) AS new_after_max,
    AVG(fg.value) AS forgetting_mean, AVG(cd.value) AS cd_rate_mean
FROM runs r
{_view_metric("pa", "prior", "after", "r.prior_metric")}
{_view_metric("na", "new", "after", "r.new_metric")}
LEFT {_view_metric("fg", "prior", "derived", "'forgetting'")}
LEFT {_view_metric("cd", "prior", "derived", "'cd_rate'")}
WHERE r.id IN (SELECT MAX(id) FROM runs WHERE status = 'ok' GROUP BY task, config_hash, seed)
AND r.task_version = (SELECT v.task_version FROM runs v WHERE v.task = r.task
    AND v.status = 'ok' ORDER BY v.id DESC LIMIT 1)
GROUP BY r.task, r.task_version, r.methods, r.config_hash, r.prior_metric, r.new_metric
"""


def _m003_leaderboard_view(connection: Connection) -> None:
    connection.execute(sa.text(LEADERBOARD_VIEW))


def _m004_leaderboard_view_current_version(connection: Connection) -> None:
    """003's view showed every task version side by side; the CLI shows the current one."""
    connection.execute(sa.text("DROP VIEW IF EXISTS leaderboard"))
    connection.execute(sa.text(LEADERBOARD_VIEW))


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_initial", _m001_initial),
    ("002_main_metrics", _m002_main_metrics),
    ("003_leaderboard_view", _m003_leaderboard_view),
    ("004_leaderboard_view_current_version", _m004_leaderboard_view_current_version),
]


@dataclass(frozen=True)
class Metric:
    split: str  # prior | new | run
    stage: str  # before | after | derived
    name: str
    value: float
    higher_is_better: bool = True


def now() -> datetime:
    return datetime.now(UTC)


def resolve_url(db: str | None) -> str:
    """``--db`` value, else ``$FORGETBENCH_DB``, else ``./results.db``; a path means SQLite.

    Refused: an empty ``--db``, text that is not a URL, and SQLite URLs without a file (an
    in-memory store would lose every run when the process ends)."""
    if db is not None and not db.strip():
        raise ForgetbenchError("--db is empty: give a SQLite path or a SQLAlchemy URL")
    value = db or os.environ.get(DB_ENV) or DEFAULT_DB
    if "://" not in value:
        return f"sqlite:///{Path(value).expanduser()}"
    try:
        url = sa.engine.make_url(value)
    except sa.exc.ArgumentError:
        raise ForgetbenchError(f"--db {value!r} is not a database URL") from None
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise ForgetbenchError(
            f"--db {value}: give the SQLite file, e.g. sqlite:///results.db (a store without"
            " a file would lose every run)"
        )
    return value


# The Python module a SQLAlchemy driver imports -> what to install for it.
DRIVER_PACKAGES = {
    "MySQLdb": "pip install mysqlclient (or use mysql+pymysql:// with pip install pymysql)",
    "pymysql": "pip install pymysql",
    "psycopg2": "pip install psycopg2-binary (or use postgresql+psycopg://"
    " with pip install 'psycopg[binary]')",
    "psycopg": "pip install 'psycopg[binary]'",
    "asyncpg": "forgetbench needs a synchronous driver: use postgresql+psycopg://",
}


def _writable_dir(path: Path) -> bool:
    """False on a read-only mount or a folder this user may not write (SQLite needs to create
    its journal files beside the database)."""
    return os.access(path.parent, os.W_OK)


def _sqlite_uri(path: str) -> str:
    """A read-only URI for an existing file. In a folder SQLite cannot write to (a read-only
    mount) a WAL database cannot be opened ``mode=ro``: it is opened immutable instead."""
    flags = "mode=ro" if _writable_dir(Path(path)) else "mode=ro&immutable=1"
    return f"file:{urllib.parse.quote(path)}?{flags}"


def _check_sqlite_path(path: str, read_only: bool) -> None:
    """Refuse what SQLite would report as a raw error: a folder, a missing folder, a store to
    write on a read-only file system, and (for reading) no file at all."""
    file = Path(path)
    if file.is_dir():
        raise ForgetbenchError(f"--db {path} is a directory, not a database file")
    if not file.parent.is_dir():
        raise ForgetbenchError(f"--db {path}: the directory {file.parent} does not exist")
    if read_only:
        if not file.exists():
            raise ForgetbenchError(
                f"no results database at {path}: nothing was run with this --db yet"
                " (try 'forgetbench run')"
            )
        return
    if not _writable_dir(file) or (file.exists() and not os.access(file, os.W_OK)):
        raise ForgetbenchError(f"--db {path} is read-only: runs cannot be stored there")


def _sqlite_tables(path: str) -> set[str]:
    """Table names of an existing SQLite file, read without writing to it.

    The engine's connections switch a file to WAL mode, which rewrites its header; a file that
    turns out not to be ours must be left exactly as it was, so it is inspected read-only first.
    """
    try:
        patience = SQLITE_PATIENCE_MS / 1000  # a locked file is waited for, as by the engine
        connect = sqlite3.connect(_sqlite_uri(path), uri=True, timeout=patience)
        with contextlib.closing(connect) as connection:
            rows = connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
            return {row[0] for row in rows}
    except sqlite3.DatabaseError as error:
        raise ForgetbenchError(
            f"{path} is not a usable SQLite database ({error}); refusing to touch it"
        ) from None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _is_stale(run: dict, hostname: str, cutoff: datetime) -> bool:
    """On this host a run is stale when its process is gone; elsewhere (or without a pid) when
    its last heartbeat is older than ``cutoff``."""
    if run["hostname"] == hostname and run["pid"]:
        return not _process_alive(run["pid"])
    return _as_utc(run["heartbeat_at"] or run["started_at"]) < cutoff


def _check_finite(results: list[Metric], curves: list[tuple[str, int, float]]) -> None:
    for metric in results:
        if not _finite(metric.value):
            raise ForgetbenchError(
                f"metric {metric.split}/{metric.stage}/{metric.name} is {metric.value}: the run"
                " diverged or its task computed no value; nothing was stored"
            )
    for name, step, value in curves:
        if not _finite(value):
            raise ForgetbenchError(
                f"series {name} is {value} at step {step}: the run diverged; nothing was stored"
            )


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # The busy timeout first: writers (and the WAL switch below) queue instead of failing.
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_PATIENCE_MS}")
    # WAL lets readers run beside one writer. The mode is stored in the file, so only the
    # first connections to a new store switch it; the others find it on.
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        _switch_to_wal(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


SQLITE_PATIENCE_MS = 60_000


def _switch_to_wal(cursor) -> None:
    """``PRAGMA journal_mode=WAL``, retried while other processes hold the new file's lock (the
    switch needs it exclusively, and SQLite can answer "locked" without waiting)."""
    deadline = time.monotonic() + SQLITE_PATIENCE_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Store:
    """Open (and migrate) a results database. Refuses files that are not forgetbench stores.

    ``read_only`` (``runs``, ``show``, ``leaderboard``) writes nothing: SQLite files are opened
    read-only, so a store on a read-only mount can be read. Only a store written by an older
    forgetbench is upgraded first (its migrations), where that is possible.
    """

    def __init__(self, db: str | None = None, read_only: bool = False):
        self.url = resolve_url(db)
        url = sa.engine.make_url(self.url)
        self.location = url.render_as_string(hide_password=True)
        self.sqlite_path = url.database if url.get_backend_name() == "sqlite" else None
        if self.sqlite_path:
            _check_sqlite_path(self.sqlite_path, read_only)
        self.engine = self._connect(read_only)
        if read_only and not self._pending_migrations():
            return
        if read_only:
            if self.sqlite_path and not _writable_dir(Path(self.sqlite_path)):
                raise ForgetbenchError(
                    f"{self.location} was written by an older forgetbench and is read-only:"
                    " open it once where it can be written, to upgrade it"
                )
            self.engine = self._connect(read_only=False)
        self._migrate()

    def _connect(self, read_only: bool) -> Engine:
        """The engine; a missing driver or an unknown backend is a one-line error."""
        try:
            if self.sqlite_path and read_only:
                uri = _sqlite_uri(self.sqlite_path)
                return sa.create_engine(
                    "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=60)
                )
            if self.sqlite_path:
                engine = sa.create_engine(self.url, connect_args={"timeout": 60})
                sa.event.listen(engine, "connect", _sqlite_pragmas)
                return engine
            return sa.create_engine(self.url, pool_pre_ping=True)
        except ModuleNotFoundError as error:
            hint = DRIVER_PACKAGES.get(error.name or "", f"install the module {error.name}")
            raise ForgetbenchError(
                f"--db {self.location}: its database driver is not installed ({hint})"
            ) from None
        except sa.exc.NoSuchModuleError:
            backend = sa.engine.make_url(self.url).drivername
            raise ForgetbenchError(
                f"--db {self.location}: unknown database backend {backend!r}"
                " (use a path for SQLite, or e.g. postgresql+psycopg://...)"
            ) from None

    def _existing_tables(self) -> set[str]:
        if self.sqlite_path:
            if not Path(self.sqlite_path).exists():
                return set()
            return _sqlite_tables(self.sqlite_path)
        try:
            return set(sa.inspect(self.engine).get_table_names())
        except sa.exc.DBAPIError as error:  # a server that is down, refused logins, ...
            first_line = str(error.orig).strip().splitlines()[0] if str(error.orig) else ""
            raise ForgetbenchError(
                f"cannot use {self.location} ({first_line}); refusing to touch it"
            ) from None

    def _pending_migrations(self) -> list[str]:
        """Names of the migrations this store still needs (all of them for a new store)."""
        tables = self._existing_tables()
        if tables and migrations_table.name not in tables:
            raise ForgetbenchError(
                f"{self.location} holds tables that forgetbench did not create"
                f" ({', '.join(sorted(tables)[:5])}); refusing to write to it"
            )
        if not tables:
            return [name for name, _ in MIGRATIONS]
        done = set(self.applied_migrations())
        unknown = sorted(done - {name for name, _ in MIGRATIONS})
        if unknown:  # its tables may have columns or meanings this version does not know
            raise ForgetbenchError(
                f"{self.location} was written by a newer forgetbench (migration"
                f" {', '.join(unknown)} is unknown here): upgrade forgetbench to use it"
            )
        return [name for name, _ in MIGRATIONS if name not in done]

    @contextlib.contextmanager
    def _migration_transaction(self) -> Iterator[Connection]:
        """A transaction holding the database's migration lock.

        Several processes may open a fresh store at once (parallel seeds); the lock makes each
        wait while another creates tables, so every migration runs exactly once.
        """
        with self.engine.begin() as connection:
            backend = connection.dialect.name
            if backend == "sqlite":
                # Take the write lock now: a deferred transaction that reads and then writes
                # fails at once with "database is locked" when another writer got in between.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            elif backend == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(PG_MIGRATION_LOCK)))
            yield connection

    def _migrate(self) -> None:
        if not self._pending_migrations():
            return
        with self._migration_transaction() as connection:
            metadata.create_all(connection, tables=[migrations_table])
        for name, migrate in MIGRATIONS:
            with self._migration_transaction() as connection:
                done = connection.execute(
                    sa.select(migrations_table.c.name).where(migrations_table.c.name == name)
                ).first()
                if done:
                    continue
                migrate(connection)
                connection.execute(migrations_table.insert().values(name=name, applied_at=now()))

    def applied_migrations(self) -> list[str]:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(migrations_table.c.name).order_by("name"))
            return [row.name for row in rows]

    # -- writing ----------------------------------------------------------------------------

    def start_run(self, **fields: Any) -> int:
        """Insert a run row with status ``running``; returns its id."""
        values = {
            "status": "running",
            "started_at": now(),
            "heartbeat_at": now(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            **fields,
        }
        with self.engine.begin() as connection:
            return connection.execute(runs.insert().values(**values)).inserted_primary_key[0]

    def update_run(self, run_id: int, **fields: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(runs.update().where(runs.c.id == run_id).values(**fields))

    def reopen_run(self, run_id: int, **fields: Any) -> None:
        """Mark an unfinished run ``running`` again (resume), in this process."""
        values = {
            "status": "running",
            "error": None,
            "finished_at": None,
            "heartbeat_at": now(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            **fields,
        }
        with self.engine.begin() as connection:
            connection.execute(runs.update().where(runs.c.id == run_id).values(**values))

    def heartbeat(self, run_id: int) -> None:
        with self.engine.begin() as connection:
            connection.execute(runs.update().where(runs.c.id == run_id).values(heartbeat_at=now()))

    def finish_run(
        self,
        run_id: int,
        results: Iterable[Metric],
        curves: Iterable[tuple[str, int, float]] = (),
        compute: dict[str, Any] | None = None,
    ) -> None:
        """Store metrics, series and status ``ok`` in one transaction: all or nothing.

        A NaN or infinite number is refused (ForgetbenchError naming it), before anything is
        written: a diverged run is not a result."""
        results, curves = list(results), list(curves)
        _check_finite(results, curves)
        with self.engine.begin() as connection:
            metric_rows = [
                {
                    "run_id": run_id,
                    "split": m.split,
                    "stage": m.stage,
                    "name": m.name,
                    "value": float(m.value),
                    "higher_is_better": m.higher_is_better,
                }
                for m in results
            ]
            if metric_rows:
                connection.execute(metrics.insert(), metric_rows)
            curve_rows = [
                {"run_id": run_id, "name": name, "step": int(step), "value": float(value)}
                for name, step, value in curves
            ]
            if curve_rows:
                connection.execute(series.insert(), curve_rows)
            done = connection.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.status == "running")
                .values(status="ok", finished_at=now(), compute=compute, error=None)
            )
            if done.rowcount != 1:  # rolls the metrics back with it
                row = connection.execute(sa.select(runs.c.status).where(runs.c.id == run_id))
                status = row.scalar()
                raise ForgetbenchError(
                    f"run {run_id} is no longer running (another process marked it"
                    f" {status or 'deleted'}): its results were not stored"
                )

    def fail_run(self, run_id: int, error: str, status: str = "failed") -> None:
        """Mark a running run ``failed`` (or ``interrupted``); a run already finished ``ok``
        keeps its status and results (a signal that arrives after they were stored)."""
        with self.engine.begin() as connection:
            connection.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.status != "ok")
                .values(status=status, error=error[:4000], finished_at=now())
            )

    @contextlib.contextmanager
    def heartbeats(self, run_id: int, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
        """Refresh the run's heartbeat every ``every`` seconds while the block runs (a thread),
        so that a live run on another host is never taken for a stale one (``runs --stale``
        reads the heartbeat's age there)."""

        def beat() -> None:
            try:
                self.heartbeat(run_id)
            except Exception as error:  # a busy store: the next beat tries again
                log.debug("heartbeat of run %s not written: %s", run_id, error)

        with periodically(beat, every, f"heartbeat-{run_id}"):
            yield

    def mark_stale_failed(self, max_age: timedelta = STALE_AFTER) -> list[int]:
        """Mark the :meth:`stale_runs` failed with error ``stale: process gone``.

        Returns the ids marked; a run that finished meanwhile keeps its status.
        """
        stale = self.stale_runs(max_age)
        marked = []
        with self.engine.begin() as connection:
            for run in stale:
                result = connection.execute(
                    runs.update()
                    .where(runs.c.id == run["id"], runs.c.status == "running")
                    .values(status="failed", error=STALE_ERROR, finished_at=now())
                )
                if result.rowcount:
                    marked.append(run["id"])
        return marked

    # -- reading ----------------------------------------------------------------------------

    def is_live(self, run: dict, max_age: timedelta = STALE_AFTER) -> bool:
        """A ``running`` row whose process may still be at work (not :meth:`stale_runs`)."""
        cutoff = now() - max_age
        return run["status"] == "running" and not _is_stale(run, socket.gethostname(), cutoff)

    def stale_runs(self, max_age: timedelta = STALE_AFTER) -> list[dict]:
        """Runs still ``running`` whose process is gone.

        On this host: the recorded pid is no longer alive. On another host (where pids cannot
        be checked): no heartbeat for ``max_age``.
        """
        hostname = socket.gethostname()
        cutoff = now() - max_age
        return [run for run in self.get_runs(status="running") if _is_stale(run, hostname, cutoff)]

    def get_runs(self, status: str | None = None, task: str | None = None) -> list[dict]:
        query = sa.select(runs).order_by(runs.c.id)
        if status:
            query = query.where(runs.c.status == status)
        if task:
            query = query.where(runs.c.task == task)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def get_run(self, run_id: int) -> dict | None:
        if not 0 <= run_id < 2**63:  # no such id (and no integer the database could compare)
            return None
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(runs).where(runs.c.id == run_id)).first()
            return dict(row._mapping) if row else None

    def get_metrics(self, run_ids: Iterable[int]) -> dict[int, dict[str, float]]:
        """{run_id: {"split/stage/name": value}}."""
        ids = list(run_ids)
        result: dict[int, dict[str, float]] = {run_id: {} for run_id in ids}
        if not ids:
            return result
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(metrics).where(metrics.c.run_id.in_(ids)))
            for row in rows:
                result[row.run_id][f"{row.split}/{row.stage}/{row.name}"] = row.value
        return result

    def get_directions(self, run_ids: Iterable[int]) -> dict[int, dict[str, bool]]:
        """{run_id: {"split/stage/name": higher_is_better}} as each run stored it."""
        ids = list(run_ids)
        result: dict[int, dict[str, bool]] = {run_id: {} for run_id in ids}
        if not ids:
            return result
        query = sa.select(metrics).where(metrics.c.run_id.in_(ids))
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                key = f"{row.split}/{row.stage}/{row.name}"
                result[row.run_id][key] = bool(row.higher_is_better)
        return result

    def get_series(self, run_id: int, name: str | None = None) -> list[tuple[str, int, float]]:
        query = sa.select(series.c.name, series.c.step, series.c.value).where(
            series.c.run_id == run_id
        )
        if name:
            query = query.where(series.c.name == name)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(series.c.name, series.c.step, series.c.id))
            return [(row.name, row.step, row.value) for row in rows]


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def latest_runs(store: Store, task: str | None = None) -> list[dict]:
    """The ``ok`` runs, one per (task, config hash, seed): a seed run twice counts once (its
    latest run). Failed runs never appear. Of each task only the runs of its current version
    (that of its latest run) count: another version is other data or another protocol, whose
    numbers must not share a table or a frontier; the runs left out are logged."""
    latest: dict[tuple[str, str, int], dict] = {}
    current: dict[str, str] = {}
    for run in store.get_runs(status="ok", task=task):  # ordered by id: later reruns win
        latest[run["task"], run["config_hash"], run["seed"]] = run
        current[run["task"]] = run["task_version"]
    runs = [run for run in latest.values() if run["task_version"] == current[run["task"]]]
    older = Counter(run["task"] for run in latest.values()) - Counter(r["task"] for r in runs)
    for name, count in sorted(older.items()):
        _warn_older_versions(store.location, name, count, current[name])
    return runs


@functools.cache  # once per process: a command may read the runs more than once
def _warn_older_versions(location: str, task: str, count: int, current: str) -> None:
    log.warning(
        "task %s: %d run(s) of older task versions left out (its current version is %s)",
        task,
        count,
        current,
    )


def config_labels(runs: list[dict]) -> dict[str, str]:
    """{config hash: label} for ``runs``: each config's stored label (the shortest where its
    runs stored several, e.g. one with a ``device`` setting, which is not in the hash), with
    ``#<hash>`` added where configs of one task would otherwise share a label."""
    labels: dict[tuple[str, str], str] = {}
    for run in runs:
        key = (run["task"], run["config_hash"])
        label = run["methods"]
        labels[key] = min(labels.get(key, label), label, key=lambda text: (len(text), text))
    shared = Counter((task, label) for (task, _), label in labels.items())
    return {
        digest: label + (f" #{digest[:7]}" if shared[task, label] > 1 else "")
        for (task, digest), label in labels.items()
    }
