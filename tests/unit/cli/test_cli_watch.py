"""Following a job over its event stream: the parser and how progress events move the bar."""

from __future__ import annotations


def test_parse_events_reads_ids_types_and_json_and_skips_keep_alives() -> None:
    from cli.watch import parse_events

    lines = ["retry: 2000", "", ": keep-alive", "", "id: 7", "event: progress",
             'data: {"id": 7, "data": {"step": 3}}', "",
             "id: 8", "event: status", 'data: {"id": 8,', 'data:  "x": 1}', ""]
    events = list(parse_events(lines))
    assert events == [{"id": "7", "event": "progress", "data": {"id": 7, "data": {"step": 3}}},
                      {"id": "8", "event": "status", "data": {"id": 8, "x": 1}}]


def test_a_progress_event_moves_the_bar_without_a_request() -> None:
    from cli.watch import _apply

    job = {"id": "j", "status": "running", "progress": {"step": 1, "total_steps": 10}, "metrics": {"train_loss": 7.0}}
    event = {"event": "progress", "data": {"data": {"step": 5, "total_steps": 10, "percent": 50.0,
                                                    "train_loss": 6.1, "tokens_per_second": 900.0}}}
    moved = _apply(job, event)
    assert moved["progress"] == {"step": 5, "total_steps": 10, "percent": 50.0}
    assert moved["metrics"] == {"train_loss": 6.1, "tokens_per_second": 900.0}
    assert job["progress"]["step"] == 1
