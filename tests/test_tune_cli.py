"""``normax tune`` plumbing, with a stand-in for the digits network (same signature)."""

from __future__ import annotations

import importlib
import sqlite3
from pathlib import Path

import pytest

from normax import cli
from normax.tune import cli as tune_cli

HERE = Path(__file__).resolve().parent


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    return importlib.import_module("test_tune_objectives").digits_stand_in


def _args(*argv):
    argv = ["tune", *argv]
    return cli.build_parser(argv).parse_args(argv)


def test_tune_runs_refines_plots_and_resumes(tmp_path, capsys, stand_in):
    pytest.importorskip("matplotlib")
    db = tmp_path / "study.db"
    args = _args("--trials", "6", "--refine", "2", "--storage", str(db), "--no-progress")
    assert tune_cli.run(args, objective=stand_in) == 0
    out = capsys.readouterr().out
    assert "study: 18 trials (18 complete), 3 rounds" in out
    assert "best trial #" in out and "lr=" in out and "layers=" in out
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"
    con = sqlite3.connect(db)
    rounds = con.execute("SELECT round, count(*) FROM trials GROUP BY round").fetchall()
    con.close()
    assert rounds == [(0, 6), (1, 6), (2, 6)]

    # running again with the same storage resumes the study and adds --trials more
    again = _args("--trials", "6", "--refine", "2", "--storage", str(db), "--no-progress")
    assert tune_cli.run(again, objective=stand_in) == 0
    captured = capsys.readouterr()
    assert "resuming" in captured.err and "adding 6 to round 2" in captured.err
    assert "study: 24 trials (24 complete), 3 rounds" in captured.out


def test_tune_with_halving_and_workers_flags_parse(tmp_path, capsys, stand_in):
    args = _args(
        "--trials",
        "9",
        "--halving",
        "--storage",
        str(tmp_path / "h.db"),
        "--no-progress",
        "--plot",
        "none",
    )
    assert args.halving and args.workers == 1 and args.scheduler is None
    assert tune_cli.run(args, objective=stand_in) == 0
    assert "study: 9 trials" in capsys.readouterr().out


def test_tune_refuses_a_foreign_storage(tmp_path, capsys, stand_in):
    db = tmp_path / "x.db"
    db.write_bytes(b"\x00" * 4096)
    before = db.read_bytes()
    assert tune_cli.run(_args("--storage", str(db), "--no-progress"), objective=stand_in) == 2
    assert "not a" in capsys.readouterr().err and db.read_bytes() == before


def test_tune_rejects_bad_shrink(capsys):
    assert tune_cli.run(_args("--shrink", "1.5")) == 2
    assert "--shrink" in capsys.readouterr().err
