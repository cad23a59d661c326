"""Trials, rounds and their SQLite storage.

One study per database file. The table ``trials`` holds one row per trial (parameters and
intermediate values as JSON text, never pickle), so any SQLite client can read a study::

    sqlite3 study.db "select number, round, state, value, params from trials order by value"

Every state change is one statement in its own transaction, committed before the study moves on;
with the write-ahead log a process killed at any moment leaves a readable database holding every
trial that finished. Only the driving process writes; workers never touch the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import tempfile
import time
import urllib.parse
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


class _DriverLock:
    """One driving process per study: an exclusive ``flock`` on ``<study>.lock`` beside it.

    Two drivers would hand out the same trial numbers. The lock lives in a file of its own: any
    ``close()`` of a descriptor of the database file would drop every POSIX lock this process
    holds on it, SQLite's included, and an outside reader would then take itself for the last
    connection and delete the write-ahead log still being written. The lock file is removed on
    release; a lock taken on a file that was meanwhile removed is retried, so a waiting opener
    can never share the lock with a newer one. Not on POSIX: no guard.
    """

    def __init__(self, path: str):
        self.path, self._fd = f"{path}.lock", None
        try:
            import fcntl
        except ImportError:
            return
        while self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StorageError(f"{path!r}: cannot create its lock file: {exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # the lock file's descriptor, never the database's
                raise StorageError(f"{path!r} is already open by another running study") from None
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # released and removed by its holder between our open and our flock
                os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # before unlocking: nobody can lock the old file after
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


class SQLiteStorage:
    """A study in one SQLite file (created if missing, validated and resumed if present).

    A new study is built in a temporary file and linked into place complete, so the path holds
    a whole study or nothing; a process killed while creating it leaves no file behind. While
    the study is open, a lock file ``<path>.lock`` keeps other drivers out.

    Parameters
    ----------
    path : str or os.PathLike
    synchronous : {"normal", "full"}
        ``normal`` (default) survives a killed process with every commit; ``full`` also fsyncs
        each commit, so a power cut cannot drop the last trials (slower per trial).

    Raises
    ------
    StorageError
        If the file exists but is not a SQLite database (an empty file included), is corrupt or
        damaged, holds other tables, or cannot be read and written (the file is left untouched),
        or if another study object or process has it open. The message names the path and the
        reason.
    """

    def __init__(self, path, *, synchronous: str = "normal"):
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        self.path = os.fspath(path)
        self._con = None
        self._lock = _DriverLock(self.path)  # first: creation and checks happen under it
        try:
            if not os.path.lexists(self.path):
                self._create()
            self._con = self._open_existing()
            # WAL: readers never block the writer and a crash leaves the last commit intact
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute(f"PRAGMA synchronous={synchronous.upper()}")
            # a read-only file opens read-only without a word: find out now, not mid-study
            self._con.execute("UPDATE meta SET value = value WHERE key = 'format'")
        except sqlite3.Error as exc:
            self.close()
            raise StorageError(f"{self.path!r} cannot be used as a study: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _connect(self, path: str, mode: str) -> sqlite3.Connection:
        uri = f"file:{urllib.parse.quote(path)}?mode={mode}"
        # autocommit: each statement is its own transaction, committed when it returns
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    def _open_existing(self) -> sqlite3.Connection:
        if os.path.isdir(self.path):
            raise StorageError(f"{self.path!r} is a directory, not a study file")
        if os.path.getsize(self.path) == 0:
            raise StorageError(f"{self.path!r} is an empty file, not a normax.tune study")
        con = self._connect(self.path, "rw")
        try:
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            fmt = None
            if _TABLES <= tables:
                row = con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                fmt = row and row[0]
        except sqlite3.DatabaseError as exc:
            con.close()
            raise StorageError(f"{self.path!r} is not a readable SQLite database: {exc}") from None
        if check != "ok":
            con.close()
            raise StorageError(f"{self.path!r} is a corrupt SQLite database: {check}")
        if fmt != FORMAT:
            con.close()
            found = ", ".join(sorted(tables)) or "none"
            raise StorageError(f"{self.path!r} is not a normax.tune study (tables: {found})")
        return con

    def _create(self) -> None:
        from normax.optim._state import remove_orphans

        folder = os.path.dirname(os.path.abspath(self.path))
        remove_orphans(folder, (".db", ".db-wal", ".db-shm", ".db-journal"))  # from kill -9
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=".db", dir=folder)
        except OSError as exc:
            raise StorageError(f"{self.path!r}: cannot create a study there: {exc}") from None
        os.close(fd)
        try:
            con = self._connect(tmp, "rw")
            try:
                con.execute("PRAGMA journal_mode=WAL")  # recorded in the file
                meta = {"format": FORMAT, "version": str(VERSION), "created": repr(time.time())}
                with con:  # one transaction
                    con.execute("BEGIN")
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            con.execute(stmt)
                    con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            finally:
                con.close()  # the last connection: the log is folded into the file
            _link_new(tmp, self.path)
        finally:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(tmp + suffix)

    # -- reading: anything malformed is a StorageError naming the file and the row ---------
    def _damaged(self, what: str, exc: BaseException) -> StorageError:
        return StorageError(f"{self.path!r} is a damaged study: {what}: {exc}")

    def _rows(self, sql: str) -> list:
        try:
            return self._con.execute(sql).fetchall()
        except sqlite3.Error as exc:
            raise self._damaged("cannot read it", exc) from None

    def meta(self) -> dict:
        rows = self._rows("SELECT key, value FROM meta")
        if not all(isinstance(v, str) for _, v in rows):
            raise self._damaged("table meta", TypeError("a value is not text"))
        return dict(rows)

    def rounds(self) -> list[Round]:
        rows = self._rows(
            "SELECT round, first_number, box, top_k, shrink FROM rounds ORDER BY round"
        )
        out = []
        for i, (r, first, box, top_k, shrink) in enumerate(rows):
            try:
                out.append(Round(_int(r, i), _int(first), _box(box), top_k, shrink))
            except (TypeError, ValueError) as exc:
                raise self._damaged(f"round {r!r}", exc) from None
        return out

    def trials(self) -> list[Trial]:
        rows = self._rows(
            "SELECT number, round, state, params, value, intermediate, error, started, finished"
            " FROM trials ORDER BY number"
        )
        out = []
        for i, (n, r, state, params, value, inter, err, t0, t1) in enumerate(rows):
            try:
                out.append(_trial(i, n, r, state, params, value, inter, err, t0, t1))
            except (TypeError, ValueError, RecursionError) as exc:
                raise self._damaged(f"trial {n!r}", exc) from None
        return out

    # -- writing: one transaction per call ---------------------------------------------------
    def _write(self, sql: str, rows, many: bool = False) -> None:
        try:
            if many:
                with self._con:
                    self._con.execute("BEGIN")
                    self._con.executemany(sql, rows)
            else:
                self._con.execute(sql, rows)
        except sqlite3.Error as exc:  # a full disk, a file made read-only or removed meanwhile
            raise StorageError(f"{self.path!r}: cannot write the study: {exc}") from None

    def set_meta(self, items: dict) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(items.items()), many=True)

    def add_round(self, rnd: Round) -> None:
        box = json.dumps({k: list(v) for k, v in rnd.box.items()})
        row = (rnd.round, rnd.first_number, box, rnd.top_k, rnd.shrink, time.time())
        self._write("INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?)", row)

    def insert_trial(self, t: Trial) -> None:
        state, value, inter, err, t0, t1, dur = _row(t)
        params = json.dumps(t.params)
        self._write(_INSERT, (t.number, t.round, state, params, value, inter, err, t0, t1, dur))

    def update_trial(self, t: Trial) -> None:
        self._write(_UPDATE, (*_row(t), t.number))

    def update_intermediate(self, t: Trial) -> None:
        self._write(
            "UPDATE trials SET intermediate = ? WHERE number = ?",
            (_json_steps(t.intermediate), t.number),
        )

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        self._lock.release()


def _int(v, expected: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{v!r} is not a non-negative integer")
    if expected is not None and v != expected:
        raise ValueError(f"expected number {expected}, found {v} (rows missing or renumbered)")
    return v


def _real(v, name: str) -> float | None:
    if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return v
    raise ValueError(f"{name} {v!r} is not a number")


def _object(text, name: str) -> dict:
    if not isinstance(text, str):
        raise ValueError(f"{name} {text!r} is not JSON text")
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError(f"{name} {text!r} is not a JSON object")
    return obj


def _box(text) -> dict:
    box = {}
    for k, v in _object(text, "box").items():
        if not (isinstance(v, list) and len(v) == 2 and None not in v):
            raise ValueError(f"box[{k!r}] = {v!r} is not a [low, high] pair")
        box[k] = (_real(v[0], "bound"), _real(v[1], "bound"))
    return box


def _trial(i, n, r, state, params, value, inter, err, t0, t1) -> Trial:
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    steps = {
        int(k): (math.nan if v is None else _real(v, "intermediate value"))
        for k, v in _object(inter, "intermediate").items()
    }
    if err is not None and not isinstance(err, str):
        raise ValueError(f"error {err!r} is not text")
    return Trial(
        _int(n, i),
        _int(r),
        state,
        _object(params, "params"),
        _real(value, "value"),
        steps,
        err,
        _real(t0, "started"),
        _real(t1, "finished"),
    )


def _link_new(tmp: str, path: str) -> None:
    """Put the finished file ``tmp`` at ``path``, never replacing a file that appeared there."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise StorageError(f"{path!r} appeared while the study was being created") from None
    except OSError:  # no hard links here; the driver lock keeps other drivers out meanwhile
        if os.path.lexists(path):
            raise StorageError(f"{path!r} appeared while the study was being created") from None
        os.replace(tmp, path)
