"""Following a job over its event stream: the parser and how progress events move the bar."""

from __future__ import annotations

import pytest


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


class _RefusingClient:
    """A client whose API has the job but refuses its event stream with the given error code."""

    def __init__(self, code: str, status: int) -> None:
        self.code, self.status = code, status
        self.polls = 0

    def get(self, path: str) -> dict:
        self.polls += 1
        return {"id": "j", "status": "completed" if self.polls > 2 else "running", "is_terminal": self.polls > 2}

    def request(self, method: str, path: str, **kwargs):
        from cli.client import ApiError

        raise ApiError(self.status, self.code, "refused")


@pytest.mark.parametrize("code, status", [("streams_busy", 503), ("too_many_streams", 429)])
def test_a_refused_stream_falls_back_to_polling(code: str, status: int) -> None:
    from cli import watch

    snapshots = list(watch.stream_snapshots(_RefusingClient(code, status), "j", interval=0))
    assert snapshots[-1]["status"] == "completed"


def test_other_stream_errors_are_raised() -> None:
    from cli import watch
    from cli.client import ApiError

    with pytest.raises(ApiError):
        list(watch.stream_snapshots(_RefusingClient("forbidden", 403), "j"))
