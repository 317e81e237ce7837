"""Every sample replays to its committed golden output (one line per step, or a JSON summary).

After a deliberate change of behaviour: ``make goldens`` (pytest --update-goldens), then read the
diff of the goldens before committing them with the change.
"""

import json
from pathlib import Path

import pytest

from explorer.cli.main import resolve_settings
from explorer.ingest import parse_trace
from explorer.model.machine import Machine
from explorer.model.summary import summary
from explorer.replay.render import format_steps

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"
#: Samples whose golden is the JSON summary (their step text would be megabytes).
SUMMARY_GOLDENS = {"workload_two_tds"}
NAMES = sorted(p.stem for p in SAMPLES.glob("*.jsonl"))


def _render(name: str) -> str:
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), f"{name}.jsonl")
    m = Machine(resolve_settings(trace, []), full_check=name not in SUMMARY_GOLDENS)
    m.run(trace.events)
    if name in SUMMARY_GOLDENS:
        return json.dumps(summary(m, len(trace.events)), indent=2) + "\n"
    lines = [f"# {trace.title}", *format_steps(m.steps)]
    lines.append(json.dumps(summary(m, len(trace.events))["counters"]))
    return "\n".join(lines) + "\n"


def _golden(name: str) -> Path:
    return SAMPLES / (f"{name}.golden.json" if name in SUMMARY_GOLDENS else f"{name}.golden.txt")


def test_the_library_has_the_lessons_the_readme_lists() -> None:
    readme = (SAMPLES / "README.md").read_text()
    for name in NAMES:
        assert f"`{name}`" in readme, f"{name} is not listed in sample_traces/README.md"
    assert len(NAMES) >= 11


@pytest.mark.parametrize("name", NAMES)
def test_sample_replays_to_its_golden(name: str, request: pytest.FixtureRequest) -> None:
    got = _render(name)
    golden = _golden(name)
    if request.config.getoption("--update-goldens"):
        golden.write_text(got)
        return
    assert golden.exists(), f"no golden for {name}: run make goldens"
    want = golden.read_text()
    if got != want:
        got_lines, want_lines = got.splitlines(), want.splitlines()
        first = next(
            (i for i, (a, b) in enumerate(zip(got_lines, want_lines, strict=False)) if a != b),
            min(len(got_lines), len(want_lines)),
        )
        pytest.fail(
            f"{name} differs from {golden.name} at line {first + 1}:\n"
            f"  golden: {want_lines[first] if first < len(want_lines) else '<end>'}\n"
            f"  now:    {got_lines[first] if first < len(got_lines) else '<end>'}"
        )


#: Samples that show a design alternative's flaw (a design review): the violations they must
#: show, and no other. Every other sample teaches without a violation.
DESIGN_FLAWS = {"v5_hint_aba": {"INV1_REFCOUNT_PAIR", "INV3_MISSING_PAIR"}}


@pytest.mark.parametrize("name", NAMES)
def test_sample_teaches_without_violations(name: str) -> None:
    trace = parse_trace((SAMPLES / f"{name}.jsonl").read_bytes(), f"{name}.jsonl")
    assert trace.title and trace.description
    m = Machine(resolve_settings(trace, []), record=False)
    m.run(trace.events)
    assert m.stopped is None
    found = {d.code for d in m.diagnostics if d.kind == "violation"}
    assert found == DESIGN_FLAWS.get(name, set())


def test_a_design_flaw_sample_is_clean_under_v6() -> None:
    """The flaw is the design's: under v6 no order of the same race violates anything or
    fires a WARN (every interleaving, `explore`), while under the sample's own mode some do."""
    from tests.test_explore import run

    for name in DESIGN_FLAWS:
        path = str(SAMPLES / f"{name}.jsonl")
        code, v6, err = run(path, "--set", "mode=v6", "--json")
        assert code == 0 and v6 is not None and v6["ok"] and v6["complete"], err
        code, own, err = run(path, "--json")
        assert code == 1 and own is not None, err
        assert DESIGN_FLAWS[name] <= {v["code"] for v in own["violations"]}
