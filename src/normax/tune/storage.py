"""Trials, rounds and their SQLite storage.

One study per database file. The table ``trials`` holds one row per trial (parameters and
intermediate values as JSON text, never pickle), so any SQLite client can read a study::

    sqlite3 study.db "select number, round, state, value, params from trials order by value"

Every state change is one statement in its own transaction, committed before the study moves on;
with the write-ahead log a process killed at any moment leaves a readable database holding every
trial that finished. Only the driving process writes; workers never touch the file.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field

__all__ = ["Round", "SQLiteStorage", "StorageError", "Trial"]

FORMAT = "normax.tune"
VERSION = 1
STATES = ("queued", "running", "complete", "pruned", "failed")
FINISHED = ("complete", "pruned", "failed")


class StorageError(ValueError):
    """The storage file is not a normax.tune study, or does not match the study opened on it."""


@dataclass
class Trial:
    """One evaluation of the objective.

    Attributes
    ----------
    number : int
        Position in the study, from 0; with the seed it fixes the sampled values.
    round : int
        Coarse-to-fine round (0 for the initial search).
    state : str
        ``queued``, ``running``, ``complete``, ``pruned`` (stopped early) or ``failed``.
    params : dict
        Parameter values, JSON-ready.
    value : float or None
        Final objective value (``None`` unless complete; for pruned trials the last report).
    intermediate : dict
        ``{step: value}`` reported by a trainable.
    error : str or None
        Why the trial failed or was pruned.
    started, finished : float or None
        Wall-clock times (seconds since the epoch).
    """

    number: int
    round: int
    state: str
    params: dict
    value: float | None = None
    intermediate: dict = field(default_factory=dict)
    error: str | None = None
    started: float | None = None
    finished: float | None = None

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


@dataclass(frozen=True)
class Round:
    """A coarse-to-fine round: the box sampled (scale bounds per parameter) and its first trial."""

    round: int
    first_number: int
    box: dict
    top_k: int | None = None
    shrink: float | None = None


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rounds (
    round INTEGER PRIMARY KEY, first_number INTEGER NOT NULL, box TEXT NOT NULL,
    top_k INTEGER, shrink REAL, created REAL NOT NULL);
CREATE TABLE trials (
    number INTEGER PRIMARY KEY, round INTEGER NOT NULL, state TEXT NOT NULL,
    params TEXT NOT NULL, value REAL, intermediate TEXT NOT NULL, error TEXT,
    started REAL, finished REAL, duration REAL);
"""
_TABLES = {"meta", "rounds", "trials"}
_INSERT = (
    "INSERT INTO trials (number, round, state, params, value, intermediate, error,"
    " started, finished, duration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = (
    "UPDATE trials SET state = ?, value = ?, intermediate = ?, error = ?, started = ?,"
    " finished = ?, duration = ? WHERE number = ?"
)


def _json_steps(intermediate: dict) -> str:
    # strict JSON has no NaN: a non-finite report is stored as null
    return json.dumps({str(k): (v if math.isfinite(v) else None) for k, v in intermediate.items()})


def _row(t: Trial) -> tuple:
    return (
        t.state,
        t.value,
        _json_steps(t.intermediate),
        t.error,
        t.started,
        t.finished,
        t.duration,
    )


def _driver_lock(path: str) -> int | None:
    """An exclusive flock on the database file: one driving process per study.

    Two drivers would hand out the same trial numbers. flock locks are separate from the POSIX
    record locks SQLite uses, so readers (any SQLite client) are not affected.
    """
    try:
        import fcntl
    except ImportError:  # not on POSIX: no guard
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StorageError(f"{path!r} is already open by another running study") from None
    return fd


class SQLiteStorage:
    """A study in one SQLite file (created if missing, validated and resumed if present).

    Parameters
    ----------
    path : str or os.PathLike
    synchronous : {"normal", "full"}
        ``normal`` (default) survives a killed process with every commit; ``full`` also fsyncs
        each commit, so a power cut cannot drop the last trials (slower per trial).

    Raises
    ------
    StorageError
        If the file exists but is not a SQLite database, is corrupt, or holds other tables (the
        file is left untouched), or if another study object or process has it open.
    """

    def __init__(self, path, *, synchronous: str = "normal"):
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        self.path = os.fspath(path)
        exists = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        self._con = self._open_existing() if exists else self._create()
        self._lock = None
        try:
            self._lock = _driver_lock(self.path)
        except BaseException:
            self._con.close()
            raise
        # WAL: readers never block the writer and a crash leaves the last commit intact
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute(f"PRAGMA synchronous={synchronous.upper()}")

    def _connect(self, mode: str) -> sqlite3.Connection:
        uri = f"file:{self.path}?mode={mode}"
        # autocommit: each statement is its own transaction, committed when it returns
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    def _open_existing(self) -> sqlite3.Connection:
        con = self._connect("rw")
        try:
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as exc:
            con.close()
            raise StorageError(f"{self.path!r} is not a readable SQLite database: {exc}") from None
        if check != "ok":
            con.close()
            raise StorageError(f"{self.path!r} is a corrupt SQLite database: {check}")
        fmt = None
        if _TABLES <= tables:
            row = con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            fmt = row and row[0]
        if fmt != FORMAT:
            con.close()
            found = ", ".join(sorted(tables)) or "none"
            raise StorageError(f"{self.path!r} is not a normax.tune study (tables: {found})")
        return con

    def _create(self) -> sqlite3.Connection:
        con = self._connect("rwc")
        meta = {"format": FORMAT, "version": str(VERSION), "created": repr(time.time())}
        with con:  # one transaction: the file is a study or nothing
            con.execute("BEGIN")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        return con

    # -- reading ---------------------------------------------------------------------------
    def meta(self) -> dict:
        return dict(self._con.execute("SELECT key, value FROM meta"))

    def rounds(self) -> list[Round]:
        rows = self._con.execute(
            "SELECT round, first_number, box, top_k, shrink FROM rounds ORDER BY round"
        )
        return [
            Round(r, f, {k: tuple(v) for k, v in json.loads(b).items()}, k, s)
            for r, f, b, k, s in rows
        ]

    def trials(self) -> list[Trial]:
        rows = self._con.execute(
            "SELECT number, round, state, params, value, intermediate, error, started, finished"
            " FROM trials ORDER BY number"
        )
        out = []
        for n, r, state, params, value, inter, err, t0, t1 in rows:
            steps = {int(k): (math.nan if v is None else v) for k, v in json.loads(inter).items()}
            out.append(Trial(n, r, state, json.loads(params), value, steps, err, t0, t1))
        return out

    # -- writing: one transaction per call ---------------------------------------------------
    def set_meta(self, items: dict) -> None:
        with self._con:
            self._con.execute("BEGIN")
            self._con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", items.items())

    def add_round(self, rnd: Round) -> None:
        box = json.dumps({k: list(v) for k, v in rnd.box.items()})
        self._con.execute(
            "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?)",
            (rnd.round, rnd.first_number, box, rnd.top_k, rnd.shrink, time.time()),
        )

    def insert_trial(self, t: Trial) -> None:
        state, value, inter, err, t0, t1, dur = _row(t)
        params = json.dumps(t.params)
        self._con.execute(
            _INSERT, (t.number, t.round, state, params, value, inter, err, t0, t1, dur)
        )

    def update_trial(self, t: Trial) -> None:
        self._con.execute(_UPDATE, (*_row(t), t.number))

    def update_intermediate(self, t: Trial) -> None:
        self._con.execute(
            "UPDATE trials SET intermediate = ? WHERE number = ?",
            (_json_steps(t.intermediate), t.number),
        )

    def close(self) -> None:
        self._con.close()
        if self._lock is not None:  # after SQLite: closing a descriptor drops POSIX locks
            os.close(self._lock)
            self._lock = None
