"""The ``--wait`` progress display and the exit status it ends with (no API needed: a scripted status feed)."""

from __future__ import annotations

import io

import pytest

from workers.cli_show import exit_code_for, follow


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(*steps: str):
    statuses = iter([{"id": "req_x", "step": s} for s in steps])

    async def fetch():
        return next(statuses)

    return fetch


async def test_one_line_per_step_change_and_a_spinner_on_a_terminal():
    out = Terminal()
    status = await follow(feed("received", "awaiting_approval", "awaiting_approval", "executing", "completed"),
                          interval=0.01, progress=out)
    assert status["step"] == "completed"
    lines = [part.rsplit("\r", 1)[-1] for part in out.getvalue().split("\n") if part]
    assert [line.split()[-1] for line in lines] == ["received", "awaiting_approval", "executing", "completed"]
    assert "\r| received (0s)" in out.getvalue()  # the spinner between changes


async def test_plain_lines_when_not_a_terminal_and_where_waiting_stops():
    out = io.StringIO()
    status = await follow(feed("executing", "needs_attention"), interval=0.01, progress=out)
    assert status["step"] == "needs_attention"
    assert "\r" not in out.getvalue() and len(out.getvalue().splitlines()) == 2
    with pytest.raises(TimeoutError, match="still executing"):
        await follow(feed(*["executing"] * 100), interval=0.01, timeout=0.05, progress=io.StringIO())


@pytest.mark.parametrize(("step", "code"), [("completed", 0), ("restricted", 0), ("failed", 1), ("rejected", 1),
                                           ("cancelled", 1), ("unverified", 1), ("needs_attention", 1)])
def test_exit_codes(step, code):
    assert exit_code_for(step) == code
