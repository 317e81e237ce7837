"""Playing on the server-drawn step view: the timer never ticks faster than MIN_TICK_S, so the
user's Pause lands between ticks (at 10 steps/s ticks ran back to back and a Pause click could
be lost for a minute); the speed itself is the chosen one (the cursor goes by the clock)."""

from __future__ import annotations

import pytest
import streamlit as st

from app_pages.ui import stepper


@pytest.mark.parametrize("speed", list(stepper.SPEEDS))
def test_ticks_are_never_closer_than_the_floor(speed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st, "session_state", {"speed": speed})
    assert stepper.period() == stepper.SPEEDS[speed]
    assert stepper.tick_interval() == max(stepper.SPEEDS[speed], stepper.MIN_TICK_S)
    assert stepper.tick_interval() >= stepper.MIN_TICK_S


def test_the_fastest_speed_ticks_slower_than_it_steps() -> None:
    assert min(stepper.SPEEDS.values()) < stepper.MIN_TICK_S  # the case the floor is for
