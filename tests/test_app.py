"""The app, page by page, with Streamlit's AppTest (no browser): flows and the figures' data."""

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from explorer.appsupport import (
    DEFAULT_SAMPLE,
    UPLOAD_LIMIT_MB,
    decode_view_state,
    encode_view_state,
    list_samples,
)
from explorer.model.settings import MAX_HOST_MEMORY_MIB, Settings

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")


def _app(**params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _chart(at: AppTest, key: str) -> dict:  # type: ignore[type-arg]
    for el in at.get("plotly_chart"):
        if json.loads(el.proto.spec).get("layout", {}).get("uirevision") == key:
            return json.loads(el.proto.spec)
    raise AssertionError(f"no chart with uirevision {key}")


def _table(at: AppTest, column: str, index: bool = False):  # type: ignore[no-untyped-def]
    """The first dataframe with ``column`` (AppTest finds dataframes by content, not key)."""
    for df in at.dataframe:
        value = df.value
        if column in value.columns or (index and any(column in str(c) for c in value.columns)):
            return value
    raise AssertionError(f"no table with a column {column!r}")


def _step_text(at: AppTest) -> str:
    return next((m.value for m in at.markdown if m.value.startswith("**Step ")), "")


def test_explore_opens_on_the_default_sample_before_the_first_step() -> None:
    at = _app()
    assert at.session_state.loaded.name == DEFAULT_SAMPLE
    assert any("Before the first step" in m.value for m in at.markdown)
    region = _chart(at, "region-map")
    assert region["data"][0]["type"] == "heatmap"
    assert _chart(at, "pamt-cache")["layout"]["title"]["text"].startswith("tdx_pamt_cache")


def test_next_prev_last_and_first() -> None:
    at = _app()
    at.button(key="btn_next").click().run()
    assert _step_text(at).startswith("**Step 0** of")
    at.button(key="btn_next").click().run()
    at.button(key="btn_prev").click().run()
    assert _step_text(at).startswith("**Step 0** of")
    at.button(key="btn_last").click().run()
    last = at.session_state.cursor
    assert _step_text(at).startswith(f"**Step {last}** of {last + 1} steps (numbered 0 to {last})")
    assert at.number_input(key="goto_step").value == last  # the box follows the cursor
    at.button(key="btn_first").click().run()
    assert at.session_state.cursor == -1


@pytest.mark.parametrize("sample", [s.name for s in list_samples()])
def test_every_sample_loads_and_steps(sample: str) -> None:
    at = _app()
    at.selectbox(key="sample_select").set_value(sample).run()
    assert not at.exception
    assert at.session_state.loaded.name == sample
    at.button(key="btn_next").click().run()
    assert _step_text(at).startswith("**Step 0**")


def test_jump_to_the_lost_race_shows_it_in_the_map_and_the_caches() -> None:
    at = _app(sample="lost_race")
    at.selectbox(key="jump_kind").set_value("a lost race").run()
    at.button(key="btn_jump_next").click().run()
    assert "lost race" in " ".join(t.value for t in at.text)
    region = _chart(at, "region-map")
    assert region["data"][1]["customdata"] == [64]  # region 64 outlined: its refcount changed
    cache = _chart(at, "pamt-cache")
    assert cache["data"][1]["y"] == [10, 10]  # the target line: 2 x 5


def test_go_to_event_and_region_jump() -> None:
    at = _app(sample="td_lifecycle")
    at.number_input(key="goto_event").set_value(7).run()
    assert "event 7 of 11 (line" in " ".join(t.value for t in at.text)
    at.selectbox(key="jump_kind").set_value("a change of region...").run()
    at.number_input(key="jump_region").set_value(64).run()
    at.button(key="btn_jump_next").click().run()
    effects = _table(at, "state")
    assert any("[64]" in str(v) or "[0x80" in str(v) for v in effects["item"])


def test_changing_a_knob_replays_and_shows_what_it_did() -> None:
    at = _app(sample="cold_5level")
    at.number_input(key="knob_dpamt_gets_per_fault").set_value(2).run()
    assert not at.exception
    metrics = {m.label: m for m in at.metric}
    assert int(metrics["retries"].value) > 0  # below the worst case: retries
    assert at.query_params["dpamt_gets_per_fault"] in ("2", ["2"])
    at.button(key="reset_settings").click().run()
    assert "dpamt_gets_per_fault" not in at.query_params


def test_a_shared_url_lands_on_the_same_step_and_settings() -> None:
    at = _app(sample="lost_race", step="132", seed="3")
    assert at.session_state.cursor == 132
    assert at.session_state.overrides == {"seed": 3}
    assert _step_text(at).startswith("**Step 132**")


def test_bad_url_parameters_are_reported_not_fatal() -> None:
    at = _app(sample="nope", step="x", mode="v9", bogus="1")
    shown = " ".join(t.value for t in at.text)
    assert "no sample named 'nope'" in shown and "step='x'" in shown and "mode='v9'" in shown


def test_traces_page_lists_events_and_generates() -> None:
    at = _app(sample="lost_race")
    at.switch_page("app_pages/traces.py").run()
    assert not at.exception
    events = _table(at, "op")
    assert len(events) == 8 and list(events["op"])[-1] == "fault"
    at.number_input(key="gen_faults").set_value(100)
    submit = next(b for b in at.button if b.key.startswith("FormSubmitter:generate"))
    submit.click().run()
    assert not at.exception
    assert at.session_state.loaded.name == "upload"
    assert at.session_state.loaded.source.startswith("boot-")


def test_compare_page_measures_the_designs() -> None:
    at = _app(sample="workload_two_tds")
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception
    table = _table(at, "v6", index=True)
    idle = table.loc["pages idle in caches (peak)"]
    assert idle.iloc[2] > idle.iloc[0]  # kvm-style-cache holds more pages idle than v6
    assert "first diverge at event" in " ".join(i.value for i in at.info)


def test_about_page_has_its_diagrams() -> None:
    at = _app()
    at.switch_page("app_pages/about.py").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2


def test_view_state_round_trip_and_upload_limit() -> None:
    base = Settings()
    s = base.with_overrides({"mode": "mempool", "seed": 3})
    params = encode_view_state("lost_race", 17, s, base)
    assert params == {"sample": "lost_race", "step": "17", "mode": "mempool", "seed": "3"}
    state, problems = decode_view_state(params)
    assert (state.sample, state.step, state.overrides, problems) == (
        "lost_race",
        17,
        {"mode": "mempool", "seed": 3},
        [],
    )
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == UPLOAD_LIMIT_MB
    assert config["server"]["enableXsrfProtection"] is True


# Hostile input, round 2 (issue 15): uploads, settings at the format's limits, CSV downloads.


def _trace(settings: dict | None = None, note: str = "") -> bytes:  # type: ignore[type-arg]
    head = {"format": "dpamt-trace", "version": 1, "title": "t", "settings": settings or {}}
    lines = [head, {"op": "td_create", "td": 0}, {"op": "vcpu_create", "td": 0, "vcpu": 0}]
    if note:
        lines[1]["note"] = note
    return ("\n".join(json.dumps(x) for x in lines) + "\n").encode()


def _upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader[0].set_value((name, data, "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _objects(value: object, depth: int = 0):  # type: ignore[no-untyped-def]
    """``value`` and everything it holds (containers, dataclass fields), a few levels deep."""
    yield value
    if depth > 4:
        return
    if isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, list | tuple | set):
        children = list(value)
    elif hasattr(value, "__dataclass_fields__"):
        children = [getattr(value, f) for f in value.__dataclass_fields__]
    else:
        children = []
    for child in children:
        yield from _objects(child, depth + 1)


@pytest.mark.parametrize(
    "settings",
    [
        {"host_memory_mib": 2097152},
        {"host_memory_mib": MAX_HOST_MEMORY_MIB},
        {"seed": 2**63 - 1},
        {"seed": 2**53},
    ],
    ids=["host-2TiB", "host-max", "seed-max", "seed-2^53"],
)
def test_every_setting_the_format_accepts_loads_in_the_app(settings: dict) -> None:  # type: ignore[type-arg]
    at = _upload(_app(), "limits.jsonl", _trace(settings))
    assert at.session_state.loaded.name == "upload"
    ((key, value),) = settings.items()
    widget = at.number_input if key != "seed" else at.text_input
    assert widget(key=f"knob_{key}").value == (value if key != "seed" else str(value))
    at.button(key="btn_next").click().run()  # a rerun keeps it: no StreamlitValueAboveMaxError
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state.overrides == {}  # the value round-trips through its widget
    at.text_input(key="knob_seed").set_value("0x10").run()
    assert at.session_state.overrides.get("seed") == 16
    at.text_input(key="knob_seed").set_value(str(2**63)).run()  # beyond the format: refused
    assert not at.exception and "expected an integer in 0..9223372036854775807" in " ".join(
        t.value for t in at.sidebar.text
    )


def test_a_refused_upload_keeps_only_its_problems_as_plain_data() -> None:
    at = _upload(_app(), "bad.jsonl", b'{"op": "no_such_op"}\n')
    assert at.session_state.loaded.name == DEFAULT_SAMPLE
    for key in list(at.session_state):
        for obj in _objects(at.session_state[key]):
            assert not isinstance(obj, BaseException), (key, obj)
    bad = at.session_state.upload_error
    assert bad.source == "bad.jsonl" and bad.problems[0].line == 1


def test_a_corrected_upload_of_the_same_name_and_size_is_read() -> None:
    good = _trace()
    bad = good.replace(b"td_create", b"td_crxxxe")
    assert len(bad) == len(good)
    at = _upload(_app(), "trace.jsonl", bad)
    assert at.session_state.loaded.name == DEFAULT_SAMPLE
    at = _upload(at, "trace.jsonl", good)
    assert at.session_state.loaded.name == "upload"
    assert "upload_error" not in at.session_state
    assert not at.error


def test_after_a_refused_upload_the_uploader_is_empty_and_the_page_says_what_stays() -> None:
    at = _upload(_app(), "bad.jsonl", b'{"op": "no_such_op"}\n')
    assert at.file_uploader[0].value is None
    shown = " ".join(t.value for t in at.text)
    assert "file: bad.jsonl" in shown and f"still loaded: {DEFAULT_SAMPLE}.jsonl" in shown
    assert "previous trace is still loaded" in at.sidebar.error[0].value
    assert list(_table(at, "reason")["line"]) == [1]
    at.button(key="btn_dismiss_upload_error").click().run()
    assert "upload_error" not in at.session_state and not at.error


FORMULAS = ["=cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3", "+1", "\tx", "\rx"]


@pytest.mark.parametrize("note", FORMULAS)
def test_tables_with_user_text_escape_formulas_for_their_csv_download(note: str) -> None:
    at = _upload(_app(), "notes.jsonl", _trace(note=note))
    at.switch_page("app_pages/traces.py").run()
    assert not at.exception
    assert _table(at, "note")["note"].iloc[0] == "'" + note
    # a refused upload's offending text is shown escaped too
    at = _upload(at, "bad.csv", note.encode() + b",1\n")
    texts = [str(v) for v in _table(at, "reason")["text"]]
    assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in texts), texts


def test_steps_and_events_follow_one_stated_convention() -> None:
    """Steps count from 0 (-1: before step 0), events from 1; before the first step no event is
    shown, and the step count is the Traces page's "replays in N steps"."""
    at = _app()
    assert at.number_input(key="goto_step").value == -1
    assert at.number_input(key="goto_event").value is None  # not 1: no event has run
    nr_steps = int(at.slider(key="step_slider").max) + 1
    before = next(m.value for m in at.markdown if m.value.startswith("**Before the first step"))
    assert f"of {nr_steps} steps, numbered 0 to {nr_steps - 1}" in before
    at.button(key="btn_next").click().run()
    assert at.number_input(key="goto_step").value == 0
    assert at.number_input(key="goto_event").value == 1
    assert _step_text(at).startswith(f"**Step 0** of {nr_steps} steps")
    at.number_input(key="goto_event").set_value(3).run()
    assert at.number_input(key="goto_event").value == 3
    assert at.number_input(key="goto_step").value == at.session_state.cursor > 0


def test_changing_a_setting_keeps_the_event_and_the_kind_of_step() -> None:
    """Step 119 of td_lifecycle (a PAMT.ADD) stays in its event, on a step of the same label,
    after switching to v6-locked (not on whatever step 119 is in the new replay)."""
    from explorer.appsupport import sample_bytes
    from explorer.ingest import parse_trace
    from explorer.replay.timeline import replay

    trace = parse_trace(sample_bytes(DEFAULT_SAMPLE), "t")
    base = Settings().with_overrides(trace.settings)
    old = replay(trace.events, base)
    new = replay(trace.events, base.with_overrides({"mode": "v6-locked"}))
    before = old.step(119)
    at = _app(step="119")
    assert at.session_state.cursor == 119
    at.selectbox(key="knob_mode").set_value("v6-locked").run()
    assert not at.exception
    after = new.step(at.session_state.cursor)
    assert after.event == before.event
    assert after.label == before.label, (before.label, after.label)
    assert at.number_input(key="goto_event").value == before.event + 1


def _compare(**params: str) -> AppTest:
    at = _app(**params)
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_compare_shows_the_seeds_reasons_beside_each_design() -> None:
    from explorer.designs.rationale import design

    at = _compare()
    modes = ["v6", "v5-topup-install", "kvm-style-cache"]
    expanders = {e.label.split(":")[0].removeprefix("Why "): e for e in at.expander}
    assert set(modes) <= set(expanders)
    for mode in modes:
        text = " ".join(m.value for m in expanders[mode].markdown)
        d = design(mode)
        for q in d.quotes:
            assert q.text in text and q.citation in text
        assert d.can_show in text and d.cannot_show in text
    # the rejected KVM-cache design carries the seed's own reason, with its line numbers
    kvm = " ".join(m.value for m in expanders["kvm-style-cache"].markdown)
    assert "too much inlined code added to headers" in kvm and "lines 16-17" in kvm
    # each side-by-side column's caption has the mode's help
    helps = [c.proto.help for c in at.caption if c.proto.help]
    assert any("**kvm-style-cache**" in h and "inlined code" in h for h in helps)


def test_compare_results_table_formats_bytes_and_counts() -> None:
    import pyarrow as pa

    at = _compare()
    df = next(d for d in at.dataframe if "pages idle in caches (peak)" in d.value.index)
    assert len(df.value) == 13  # every row, retries and after included
    assert df.value.loc["static 4 KiB PAMT bytes"].iloc[0] > 0  # the data stay numbers
    shown = pa.ipc.open_stream(df.proto.arrow_data.styler.display_values).read_all()
    cells = " ".join(str(v) for col in shown.to_pydict().values() for v in col)
    assert "1.00 MB" in cells and "16 KB" in cells  # bytes with units, not 1048576


def test_compare_memory_calculator_at_maxpa_says_dpamt_costs_more() -> None:
    at = _compare()
    at.number_input(key="oh_host").set_value(256)
    at.slider(key="oh_frac").set_value(0.0)
    at.radio(key="oh_maxpfn").set_value("at maxpa").run()
    assert not at.exception
    table = next(d.value for d in at.dataframe if "part" in d.value.columns)
    sizes = dict(zip(table["part"], table["size"], strict=True))
    assert sizes["total static PAMT"] == "1.00 GB"
    assert sizes["total Dynamic PAMT"] == "8.01 GB"  # the cover letter's 8.01
    assert "1,075,843,072 B" in set(table["bytes"])
    assert any("MORE than static PAMT" in w.value for w in at.warning)
    # the sparse refcounts (the dropped optimization) bring it back to a saving
    at.radio(key="oh_refcounts").set_value(at.radio(key="oh_refcounts").options[1]).run()
    assert any("Dynamic PAMT saves" in s.value for s in at.success)


def test_compare_cover_letter_table_and_citation() -> None:
    from explorer.designs.overhead import COVER_LETTER_TABLE, LORE_V6

    at = _compare()
    cover = next(d.value for d in at.dataframe if "DPAMT (published, GB)" in d.value.columns)
    assert len(cover) == 4
    assert list(cover["DPAMT (published, GB)"]) == [f"{r[4]:.2f}" for r in COVER_LETTER_TABLE]
    assert list(cover["savings/(loss) (published)"]) == [r[5] for r in COVER_LETTER_TABLE]
    assert list(cover["DPAMT costs more"]) == ["no", "yes", "no", "yes"]
    assert any(LORE_V6 in c.value for c in at.caption)


def test_about_quotes_the_cover_letters_rows() -> None:
    at = _app()
    at.switch_page("app_pages/about.py").run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "| 256GB | maxpa (52 bits) | 1.02 GB | 8.01 GB | (8x) |" in text
    assert "| 2TB | RAM size | 8.19 GB | 0.08 GB | 99x |" in text
    assert "Where Dynamic PAMT costs more" in text and "rick.p.edgecombe" in text


def test_a_stopped_load_says_so_and_keeps_the_previous_trace() -> None:
    """A long upload is parsed and replayed before it replaces the loaded trace; a run stopped
    meanwhile leaves the loading mark, and the next run says the load was cancelled."""
    at = _app()
    at.session_state.loading = "big.jsonl"  # what a stopped load leaves behind
    at.run()
    assert not at.exception
    notes = [w.value for w in at.warning]
    assert any("The load of big.jsonl was cancelled" in n for n in notes), notes
    assert at.session_state.loaded.name == DEFAULT_SAMPLE
    at.run()  # said once
    assert not any("was cancelled" in w.value for w in at.warning)


def test_a_long_upload_shows_progress_from_its_first_line() -> None:
    """parse_trace reports as it parses, against the line count of its first pass."""
    from explorer.ingest import parse_trace
    from explorer.ingest.generate import boot

    text = "\n".join(boot(tds=1, vcpus=2, faults=150_000, seed=1)) + "\n"
    seen: list[tuple[float, str]] = []
    trace = parse_trace(text.encode(), "big.jsonl", lambda f, m: seen.append((f, m)))
    assert len(trace.events) > 150_000
    assert seen[0] == (0.0, "checking the file") and len(seen) >= 3
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and 0.3 < fractions[-1] <= 1.0
    assert "of" in seen[-1][1] and "lines" in seen[-1][1]


def test_the_sidebar_mode_help_gives_each_designs_summary() -> None:
    at = _app()
    box = next(s for s in at.sidebar.selectbox if s.label.startswith("mode"))
    assert "**v6**" in box.help and "**mempool**" in box.help
    assert "DELIBERATELY BROKEN" in box.help  # v6-no-recheck says what it is
    assert "v6-no-recheck (deliberately broken)" in box.options


def _open_tab(at: AppTest, label: str) -> AppTest:
    at.session_state.explore_tab = label
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_an_uploaded_capture_shows_its_divergences_and_jumps_to_them() -> None:
    at = _app()
    data = (ROOT / "sample_traces" / "captures" / "divergent.txt").read_bytes()
    _upload(at, "divergent.txt", data)
    loaded = at.session_state.loaded
    assert loaded.source == "divergent.imported.jsonl"
    # the loaded trace pins the kernel's pages, so its steps are conform's (test_capture_pins.py)
    assert any(getattr(e, "control", None) for e in loaded.trace.events)
    info = at.session_state.capture_info
    assert not info.conformance.ok and {d.line for d in info.conformance.divergences} == {
        72,
        84,
        88,
    }
    _open_tab(at, "Kernel capture")
    assert any("divergence(s)" in m.value for m in at.markdown)
    table = _table(at, "capture line")
    assert set(table["capture line"]) == {72, 84, 88}
    _chart(at, "capture-markers")
    at.selectbox(key="jump_kind").set_value("a divergence from the kernel capture").run()
    at.button(key="btn_jump_next").click().run()
    first = min(d.step for d in info.conformance.divergences)
    assert at.session_state.cursor == first


def test_an_uploaded_capture_of_an_inlining_build_says_what_was_derived() -> None:
    """A capture without the control-page helpers' gets and puts (a build that inlined them)
    conforms, and the capture tab says the calls were derived (docs/capture.md)."""
    from tests.test_capture_inlined import _inlined

    at = _app()
    text = _inlined((ROOT / "sample_traces" / "captures" / "conforming.txt").read_text())
    _upload(at, "inlined.txt", text.encode())
    info = at.session_state.capture_info
    assert info.conformance.ok and any(
        "derived from tdx_alloc_control_page" in n for n in info.notes
    )
    _open_tab(at, "Kernel capture")
    assert any("tdx_pamt_put call(s) derived" in c.value for c in at.caption)


def test_a_review_note_is_pinned_carried_by_the_link_and_downloaded_in_the_trace() -> None:
    at = _app(sample="lost_race", step="40")
    _open_tab(at, "Review notes")
    at.text_input(key="note_text").set_value("look here: the slow path starts").run()
    at.button(key="btn_pin_note").click().run()
    assert at.session_state.review_notes == {40: "look here: the slow path starts"}
    raw = at.query_params["notes"]
    raw = raw[0] if isinstance(raw, list) else raw
    assert json.loads(raw) == [[40, "look here: the slow path starts"]]
    assert any(i.value == "Review note on this step:" for i in at.info)
    # the link carries it into a fresh session, shown on its step
    link = _app(sample="lost_race", step="40", notes=raw)
    assert link.session_state.review_notes == {40: "look here: the slow path starts"}
    # a jump finds it; the downloaded trace has it as a note event before the step's event
    link.session_state.cursor = 0
    link.run()
    link.selectbox(key="jump_kind").set_value("a review note").run()
    link.button(key="btn_jump_next").click().run()
    assert link.session_state.cursor == 40
    from explorer.appsupport import notes_in_trace
    from explorer.ingest import parse_trace
    from explorer.replay.timeline import replay

    trace = parse_trace((ROOT / "sample_traces" / "lost_race.jsonl").read_bytes(), "x")
    tl = replay(trace.events, Settings().with_overrides(trace.settings))
    with_notes = notes_in_trace(trace.events, tl, {40: "look"})
    note = next(e for e in with_notes if e.op == "note" and "review note" in e.text)
    i = with_notes.index(note)
    assert (
        with_notes[i + 1] is trace.events[tl.step(40).event]
        and note.t == trace.events[tl.step(40).event].t
    )


def test_bad_notes_in_a_link_are_reported_not_fatal() -> None:
    at = _app(sample="lost_race", notes="[[1, 2]]")
    assert any("URL: notes ignored" in t.value for t in at.text)
    assert not at.session_state.review_notes


#: A page file is a thin script: widget layout and calls (issue 24); shared pieces are app_pages/ui's.
MAX_PAGE_LINES = 300


def test_no_file_in_app_pages_is_over_300_lines() -> None:
    files = sorted((ROOT / "app_pages").rglob("*.py"))
    assert len(files) > 10  # the pages and the ui package's pieces
    long = {
        str(f.relative_to(ROOT)): n
        for f in files
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_PAGE_LINES
    }
    assert not long, f"over {MAX_PAGE_LINES} lines: {long}"


@pytest.mark.parametrize("raw", ["\u0661\u0660", "1_0", " 10", "+10", "1e1", "1234567890"])
def test_a_link_step_is_ascii_digits_only(raw: str) -> None:
    """step= reads like the CLI's numbers: other scripts' digits, spaces, underscores, signs and
    exponents are refused with a message, and the view starts before the first step."""
    at = _app(sample="lost_race", step=raw)
    assert any("is not a step" in t.value and "ASCII digits" in t.value for t in at.text)
    assert at.session_state.cursor == -1


def test_a_link_tour_stop_is_ascii_digits_only() -> None:
    at = AppTest.from_file(APP, default_timeout=90)
    at.query_params["tour"] = "lost_race"
    at.query_params["stop"] = "\u0663"
    at.switch_page("app_pages/learn.py").run()
    assert not at.exception
    assert at.session_state.learn_stop == 0


def test_link_notes_outside_the_trace_are_dropped_with_a_message() -> None:
    at = _app(sample="lost_race", notes=json.dumps([[10**30, "x"], [3, "kept"]]))
    assert at.session_state.review_notes == {3: "kept"}
    assert any("outside this replay" in w.value and str(10**30) in w.value for w in at.warning)


def test_notes_too_long_for_a_link_are_refused_by_the_app() -> None:
    from explorer.appsupport import (
        MAX_NOTE_CHARS,
        MAX_URL_NOTES_CHARS,
        decode_notes,
        encode_notes,
        url_notes_length,
    )

    big = {k: "\u00e9" * MAX_NOTE_CHARS for k in range(10)}
    assert url_notes_length(big) > MAX_URL_NOTES_CHARS
    # a link never carries them; a crafted one is refused by length, not parsed
    assert "notes" not in encode_view_state("lost_race", 3, Settings(), Settings(), big)
    with pytest.raises(ValueError, match="longer than a link carries"):
        decode_notes(encode_notes(big))
    # pinning one note too many says so, and the link keeps the notes it had
    at = _app(sample="lost_race", step="5")
    _open_tab(at, "Review notes")
    for step in range(5, 15):
        at.session_state.cursor = step
        at.run()
        at.text_input(key="note_text").set_value("\u00e9" * MAX_NOTE_CHARS).run()
        at.button(key="btn_pin_note").click().run()
        if at.session_state.get("note_error"):
            break
    else:
        raise AssertionError("every note was pinned")
    assert any("would not fit in a link" in w.value for w in at.warning)
    assert step not in at.session_state.review_notes
    raw = at.query_params["notes"]
    raw = raw[0] if isinstance(raw, list) else raw
    assert len(json.loads(raw)) == len(at.session_state.review_notes)


def test_the_replay_cache_is_bounded_in_bytes_least_recently_used_first() -> None:
    from explorer.appsupport import ByteBudgetCache, parse_estimate, replay_estimate

    cache = ByteBudgetCache(1000)
    assert cache.put("a", 1, 400) and cache.put("b", 2, 400)
    assert cache.get("a") == 1  # now b is the least recently used
    assert cache.put("c", 3, 300)  # 1,100 > 1,000: b goes
    assert cache.held() == ["a", "c"] and cache.total == 700 and cache.get("b") is None
    assert not cache.put("huge", 4, 1001)  # over the budget alone: kept nowhere here
    assert cache.held() == ["a", "c"] and cache.total == 700
    assert cache.put("a", 5, 900)  # a replaced (its old size freed), c dropped to fit
    assert cache.held() == ["a"] and cache.total == 900 and cache.get("a") == 5
    # the estimates: a 1.08M-event upload is about 660 MiB, under the 1 GiB budget alone
    n = 1_075_398
    assert 600 << 20 < parse_estimate(n) + replay_estimate(n) < 700 << 20


def test_a_trace_over_the_budget_stays_in_its_session_only(monkeypatch: Any) -> None:
    from app_pages.ui import replays
    from explorer.appsupport import REPLAY_CACHE_BUDGET, ByteBudgetCache

    fresh = ByteBudgetCache(REPLAY_CACHE_BUDGET)
    monkeypatch.setattr(replays, "shared_cache", lambda: fresh)
    monkeypatch.setattr(replays, "replay_estimate", lambda n: REPLAY_CACHE_BUDGET + 1)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.run()
    at.selectbox(key="sample_select").set_value("lost_race").run()
    assert not at.exception, [e.value for e in at.exception]
    own = at.session_state["own_cache"]
    # the session keeps its latest replay (the one on show); the shared cache none
    ((kind, _, _),) = own
    assert kind == "replay" and next(iter(own.values())).nr_steps > 0
    assert [k[0] for k in fresh.held()].count("replay") == 0
    assert [k[0] for k in fresh.held()].count("parse") >= 2
