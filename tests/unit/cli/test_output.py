"""What the CLI prints: the progress line, durations, tables, the watch loop."""

from __future__ import annotations

import pytest

from cli.output import duration, print_table, progress_line
from cli.watch import ProgressLine, follow, outcome_message


@pytest.mark.parametrize("seconds,text", [(None, "?"), (0, "0s"), (59.4, "59s"), (185, "3m05s"), (7620, "2h07m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_progress_line_shows_step_loss_speed_and_eta(make_job):
    line = progress_line(make_job("running", 5, loss=6.85123))
    assert line.startswith("[##########..........]   50.0%")
    assert "step 5/10" in line and "loss 6.8512" in line and "1,234 tok/s" in line and "eta 5s" in line
    assert line.endswith("(running)")


def test_progress_line_of_a_queued_and_a_completed_job(make_job):
    queued = {"status": "queued", "is_terminal": False, "progress": {}, "metrics": {}}
    assert progress_line(queued) == "[....................]    0.0%  step 0/?  loss -  - tok/s  eta ?  (queued)"
    done = progress_line(make_job("completed", 10, loss=1.0))
    assert "100.0%" in done and "eta" not in done


def test_table_aligns_columns(capsys):
    print_table([{"a": "x", "b": None}, {"a": "longer", "b": 1.23456}], [("a", lambda r: r["a"]),
                                                                         ("b", lambda r: r["b"])])
    assert capsys.readouterr().out.splitlines() == ["A       B", "x       -", "longer  1.235"]


def test_follow_prints_each_change_once_when_not_a_terminal(capsys, make_job):
    snapshots = [make_job("queued", 0), make_job("queued", 0), make_job("running", 3, 2.0),
                 make_job("completed", 10, 1.0)]
    last = follow(iter(snapshots), ProgressLine(live=False))
    assert last["status"] == "completed"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[-1].endswith("(completed)")
    assert "completed" in outcome_message(last)


def test_live_line_redraws_in_place(capsys, make_job):
    follow(iter([make_job("running", 1, 3.0), make_job("failed", 2, 2.5)]), ProgressLine(live=True))
    out = capsys.readouterr().out
    assert out.count("\r") == 2 and out.endswith("\n") and out.count("\n") == 1
    assert "out_of_memory" in outcome_message(make_job("failed", 2))
