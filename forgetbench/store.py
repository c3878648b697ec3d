"""The results store: plain SQL tables through SQLAlchemy 2.x (SQLite by default).

Tables: ``runs`` (one row per run, provenance and status), ``metrics`` (run, split, stage, name,
value), ``series`` (curves: run, name, step, value). Schema changes are numbered migrations,
recorded in ``forgetbench_migrations`` and applied one transaction each.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from forgetbench.errors import ForgetbenchError

DB_ENV = "FORGETBENCH_DB"
DEFAULT_DB = "results.db"
STATUSES = ("running", "ok", "failed", "interrupted")

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


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_initial", _m001_initial),
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
    """``--db`` value, else ``$FORGETBENCH_DB``, else ``./results.db``; a path means SQLite."""
    value = db or os.environ.get(DB_ENV) or DEFAULT_DB
    return value if "://" in value else f"sqlite:///{Path(value).expanduser()}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside one writer; the busy timeout makes writers queue, not fail.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """Open (and migrate) a results database. Refuses files that are not forgetbench stores."""

    def __init__(self, db: str | None = None):
        self.url = resolve_url(db)
        self.engine = self._connect()
        self._migrate()

    def _connect(self) -> Engine:
        if self.url.startswith("sqlite"):
            engine = sa.create_engine(self.url, connect_args={"timeout": 60})
            sa.event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return sa.create_engine(self.url, pool_pre_ping=True)

    def _migrate(self) -> None:
        try:
            tables = set(sa.inspect(self.engine).get_table_names())
        except sa.exc.DatabaseError as error:
            raise ForgetbenchError(
                f"{self.url} is not a usable database ({error.orig}); refusing to touch it"
            ) from None
        if tables and migrations_table.name not in tables:
            raise ForgetbenchError(
                f"{self.url} holds tables that forgetbench did not create"
                f" ({', '.join(sorted(tables)[:5])}); refusing to write to it"
            )
        with self.engine.begin() as connection:
            metadata.create_all(connection, tables=[migrations_table])
        for name, migrate in MIGRATIONS:
            with self.engine.begin() as connection:
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
        """Store metrics, series and status ``ok`` in one transaction: all or nothing."""
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
            connection.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(status="ok", finished_at=now(), compute=compute, error=None)
            )

    def fail_run(self, run_id: int, error: str, status: str = "failed") -> None:
        with self.engine.begin() as connection:
            connection.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(status=status, error=error[:4000], finished_at=now())
            )

    # -- reading ----------------------------------------------------------------------------

    def get_runs(self, status: str | None = None, task: str | None = None) -> list[dict]:
        query = sa.select(runs).order_by(runs.c.id)
        if status:
            query = query.where(runs.c.status == status)
        if task:
            query = query.where(runs.c.task == task)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def get_run(self, run_id: int) -> dict | None:
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
