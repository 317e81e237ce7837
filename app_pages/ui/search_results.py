"""The Interleavings page's result: the search's summary, the outcomes (or, of a stopped
search, the end states it had reached) and the findings, each with a button that opens it in
Explore with its schedule pinned. Kept out of the page (pages stay thin); Streamlit only draws
here, the rows come from :mod:`explorer.interleavings.job`."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from app_pages import common
from explorer.interleavings.job import (
    explore_step,
    finding_link,
    first_difference,
    outcome_rows,
    pinned_trace,
    reached_rows,
    violation_rows,
)
from explorer.model.settings import Settings

#: "Open in Explore" buttons shown for the first outcomes (or reached end states): a table of
#: thousands needs no thousand buttons
MAX_OUTCOME_BUTTONS = 60
BUTTONS_PER_ROW = 6


def _stem(source: str) -> str:
    name = PurePath(source).name
    for suffix in (".gz", ".jsonl", ".csv"):
        name = name.removesuffix(suffix)
    return name or "trace"


def open_pinned(
    loaded: common.Loaded,
    settings: Settings,
    orders: list[list[str]],
    label: str,
    suffix: str,
    at_step: int | None = None,
) -> None:
    """Load the trace with ``orders`` pinned and open Explore at ``at_step`` (a finding: the
    step it fires at), else where the pinned replay departs from the trace (an outcome)."""
    if loaded.name != "upload":  # a sample (pinned or not): its link names it and the orders
        with st.spinner("Pinning the schedule..."):
            plain = common.pinned_sample(loaded.name, []).trace if loaded.schedule else loaded.trace
            try:
                at_sample = common.adopt_pinned(loaded.name, orders, settings)
            except ValueError as exc:
                st.error(f"The schedule could not be pinned: {exc}")
                return
            step = (
                at_step
                if at_step is not None
                else first_difference(plain.events, settings, at_sample.trace.events)
            )
        st.session_state.cursor = step
        st.switch_page("app_pages/explore.py")
        return
    with st.spinner("Pinning the schedule and finding where it departs..."):
        data = pinned_trace(loaded.trace, settings, orders, label)
        problems = common.load_upload(f"{_stem(loaded.source)}-{suffix}.jsonl", data)
        if problems is not None:
            st.error("The pinned trace did not load:")
            common.problems_table(problems)
            return
        pinned: common.Loaded = st.session_state.loaded
        step = (
            at_step
            if at_step is not None
            else first_difference(loaded.trace.events, settings, pinned.trace.events)
        )
    st.session_state.cursor = step
    st.switch_page("app_pages/explore.py")


def summary(loaded: common.Loaded, result: dict[str, Any]) -> None:
    states, seconds = result["states"], result["seconds"]
    searched = "searched (reduced)" if result.get("reduction") else "(full search)"
    if not result["complete"]:
        covered = result.get("covered", {})
        st.warning(
            f"Incomplete: {states:,} states {searched} in {seconds} s, then the search stopped "
            f"in group {covered.get('groups', '?')} of {covered.get('groups_total', '?')}; "
            "nothing is claimed about the outcomes it did not reach. Raise the state limit and "
            "run it again."
        )
        st.text(str(result.get("stopped", "")))
        return
    verdict = "complete" if result["ok"] else "complete, with findings"
    st.markdown(
        f"**{states:,}** states {searched}, **{result['schedules']:,}** schedules {searched}, "
        f"**{len(result['outcomes']):,}** distinct outcomes ({result['end_states']:,} end "
        f"states: those differing only in page numbers are one outcome), {seconds} s: "
        f"{verdict}."
    )
    if "impossible" in result:
        at = dict(result.get("impossible_at") or {})
        events = loaded.trace.events
        if 1 <= int(at.get("event", 0)) <= len(events):  # the line in the user's own file (the
            at["line"] = events[int(at["event"]) - 1].line  # search read a copy it wrote)
        if int(at.get("group", 0)) < 0:
            st.error(
                f"Line {at.get('line')} (event {at.get('event')}) cannot happen, before any "
                "concurrent group (the trace itself is invalid: Check says so too):"
            )
        else:
            st.warning(
                f"Under some interleaving line {at.get('line')} (event {at.get('event')}) cannot "
                f"happen (group {int(at.get('group', 0)) + 1}, schedule "
                f"{' '.join(at.get('schedule', []))}):"
            )
        st.text(str(result["impossible"]))


def outcomes(loaded: common.Loaded, settings: Settings, result: dict[str, Any]) -> None:
    rows = outcome_rows(result)
    if not rows:
        return
    st.subheader("Outcomes")
    st.caption(
        "Each distinct end state, how many turn orders reach it, and what it leaves. Open one "
        "to replay an interleaving that reaches it."
    )
    config = {
        "regions (refcount)": st.column_config.TextColumn(width="medium"),
        "kernel paths": st.column_config.TextColumn(width="large"),
    }
    frame = common.safe_frame(rows)
    st.dataframe(
        frame, hide_index=True, width="stretch", key="table_outcomes", column_config=config
    )
    st.caption("Open an outcome in Explore:")
    _open_buttons(loaded, settings, result["outcomes"], "outcome")


def reached(loaded: common.Loaded, settings: Settings, result: dict[str, Any]) -> None:
    """What a search stopped by its limit (or the Stop button) had reached: real end states,
    each with a schedule that reaches it, but not every outcome."""
    rows = reached_rows(result)
    st.subheader("Reached before the stop")
    st.caption(
        "The search did not finish, so these are not every outcome and no schedule counts are "
        "claimed; each is a real end state, with a schedule that reaches it. Open one to "
        "replay that schedule."
    )
    config = {"regions (refcount)": st.column_config.TextColumn(width="medium")}
    st.dataframe(
        common.safe_frame(rows),
        hide_index=True,
        width="stretch",
        key="table_reached",
        column_config=config,
    )
    _open_buttons(loaded, settings, result["reached"], "reached")


def _open_buttons(
    loaded: common.Loaded, settings: Settings, ends: list[dict[str, Any]], what: str
) -> None:
    """An "Open in Explore" button per outcome (``what`` "outcome") or end state reached
    before a stop ("reached"), for the first :data:`MAX_OUTCOME_BUTTONS`, in rows."""
    shown = ends[:MAX_OUTCOME_BUTTONS]
    if len(ends) > MAX_OUTCOME_BUTTONS:
        st.caption(f"Buttons for the first {MAX_OUTCOME_BUTTONS}.")
    for first in range(0, len(shown), BUTTONS_PER_ROW):
        cols = st.columns(BUTTONS_PER_ROW)
        row = enumerate(shown[first : first + BUTTONS_PER_ROW], first + 1)
        for col, (n, o) in zip(cols, row, strict=False):
            if col.button(
                f"{what.capitalize()} {n}",
                key=f"btn_open_{what}_{n}",
                width="stretch",
                help=f"Open {'outcome' if what == 'outcome' else 'end state'} {n} in Explore, "
                "pinned to a schedule that reaches it",
            ):
                open_pinned(loaded, settings, o["orders"], f"{what} {n}", f"{what}-{n}")


def findings(loaded: common.Loaded, settings: Settings, result: dict[str, Any]) -> None:
    link = None
    if loaded.name != "upload":  # a sample: a link can name it
        base = Settings().with_overrides(loaded.trace.settings)

        def link(v: dict[str, Any]) -> str:
            # (Explore is the default page: the app's root, relative to this page's URL)
            return "./?" + urlencode(finding_link(loaded.name, settings, base, v))

    rows = violation_rows(result, link)
    st.subheader("Findings")
    if not rows:
        if result["complete"]:
            st.success("No schedule violates an invariant, fires a kernel WARN or deadlocks.")
        return
    st.caption(
        "Invariant violations, kernel WARNs, deadlocks and livelocks, each with the first "
        "schedule found that reproduces it (step: where it fires in that schedule's replay, "
        "the step Explore opens at)."
        + (
            " The link reproduces it: the sample, its settings and the pinned schedule."
            if link is not None
            else " (A link needs a sample: an uploaded trace is not in the app's library.)"
        )
    )
    config: dict[str, Any] = {"message": st.column_config.TextColumn(width="large")}
    if link is not None:
        config["link"] = st.column_config.LinkColumn(display_text="link", width="small")
    frame = common.safe_frame(rows)
    st.dataframe(
        frame, hide_index=True, width="stretch", key="table_findings", column_config=config
    )
    violations = result["violations"]
    for first in range(0, len(violations), BUTTONS_PER_ROW):
        cols = st.columns(BUTTONS_PER_ROW)
        for col, v in zip(cols, violations[first : first + BUTTONS_PER_ROW], strict=False):
            code = str(v["code"])
            if col.button(
                f"Open {code}",
                key=f"btn_open_finding_{code}",
                width="stretch",
                help=f"Open {code} in Explore at step {explore_step(v)}, where it fires",
            ):
                open_pinned(loaded, settings, v["orders"], code, code, at_step=explore_step(v))
