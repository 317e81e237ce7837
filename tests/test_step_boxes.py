"""The stepper's boxes and slider (app_pages/ui/boxes.py): what the browser sends back for them
is a request only when the user edited them.

Streamlit's rule, reproduced here: a widget's value comes back from the browser on every rerun,
and its on_change is called when that value differs from the value the server last set under
the widget's key. The browser holds the values of the last run it received. Issue 27's bug: Play
in the instant view paused at 63, the pause's report set the server's cursor to 63 in a run cut
short before the browser got its boxes, and the next rerun (a change of speed) sent the boxes'
older value 57 back: read as a request, the view jumped to 57.
"""

from __future__ import annotations

from typing import Any

from app_pages.ui.boxes import KEYS, boxes_delivered, edited, show_boxes


class Session:
    """A server's state and a browser's boxes, with runs the browser may not receive."""

    def __init__(self, filtered: bool = True) -> None:
        self.filtered = filtered  # False: every callback is a request (the code before the fix)
        self.server: dict[str, Any] = {}  # the session state (the last value set per key)
        self.browser: dict[str, Any] = {}  # the boxes' values the browser sends back
        self.cursor = -1

    def run(self, finished: bool = True, received: bool | None = None) -> None:
        """A run that draws the boxes at the cursor. ``finished=False``: cut short after it set
        them; ``received``: whether the browser got them (by default, if it finished)."""
        cur = self.cursor
        show_boxes((cur, cur + 1 if cur >= 0 else None, cur), self.server)
        if finished:
            boxes_delivered(self.server)
        if finished if received is None else received:
            self.browser = {k: self.server[k] for k in KEYS}

    def rerun(self) -> list[int]:
        """The requests of the next rerun: the callbacks Streamlit calls (a value sent that
        differs from the server's last under its key), those :func:`edited` keeps."""
        asked = []
        for k, v in self.browser.items():
            if self.server.get(k) != v and v is not None:
                self.server[k] = v
                if not self.filtered or edited(k, self.server):
                    asked.append(int(v))
        return asked


def _paused_play(filtered: bool) -> list[int]:
    s = Session(filtered)
    s.cursor = 57
    s.run()  # the browser shows 57
    s.cursor = 63  # the pause's report, in a run cut short before the browser got the boxes
    s.run(finished=False)
    return s.rerun()  # the speed changes: what is asked?


def test_an_older_value_sent_back_is_not_a_request() -> None:
    assert _paused_play(filtered=True) == []


def test_before_the_fix_it_was_read_as_a_request() -> None:
    """The control: every callback taken as a request (the code before the fix) asks for step
    57 in the same runs, so the test above can fail."""
    assert _paused_play(filtered=False) == [57, 58, 57]  # the step box, the event box, the slider


def test_an_edit_is_a_request_even_to_a_step_shown_before() -> None:
    s = Session()
    for step in (10, 20, 30):  # the instant view reported these, one by one
        s.cursor = step
        s.run()
    s.browser["goto_step"] = 10  # the user types 10, a step the box showed before
    assert s.rerun() == [10]
    s.browser["step_slider"] = 20  # and drags the slider to 20
    assert s.rerun() == [20]


def test_an_edit_after_a_run_cut_short_is_a_request() -> None:
    s = Session()
    s.cursor = 5
    s.run()
    s.cursor = 9  # a report moved the cursor in a run cut short
    s.run(finished=False)
    s.browser["goto_step"] = 40  # the user edits the box it shows
    assert s.rerun() == [40]


def test_no_edit_no_request() -> None:
    s = Session()
    for step in (-1, 0, 1, 2):  # Next, Next, Next: every run received
        s.cursor = step
        s.run()
        assert s.rerun() == [], step
