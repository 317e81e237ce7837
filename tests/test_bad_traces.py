"""The bad-trace corpus: each file gets its exact error (file:line:col and reason), never a
traceback; the good ones (CRLF, BOM, comments, CSV) are accepted."""

import json
from pathlib import Path

import pytest

from explorer.ingest import parse_trace
from explorer.model.errors import TraceError
from explorer.model.machine import Machine
from explorer.model.settings import Settings

CORPUS = Path(__file__).resolve().parent / "bad_traces"
EXPECTED: dict[str, dict[str, str]] = json.loads((CORPUS / "expected.json").read_text())


def test_the_corpus_is_complete() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.name != "expected.json"}
    assert files == set(EXPECTED)
    assert sum(1 for e in EXPECTED.values() if e["kind"] != "ok") >= 40


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_file_gets_its_exact_error(name: str) -> None:
    want = EXPECTED[name]
    data = (CORPUS / name).read_bytes()
    if want["kind"] == "parse":
        with pytest.raises(TraceError) as info:
            parse_trace(data, name)
        first = info.value.problems[0]
        assert f"{first.line}:{first.col}".startswith(want["where"]), str(first)
        assert want["reason"] in first.reason, str(first)
        assert str(first).startswith(f"{name}:" if first.line else name)
        return
    trace = parse_trace(data, name)
    m = Machine(Settings().with_overrides(trace.settings))
    m.run(trace.events)
    if want["kind"] == "ok":
        assert m.stopped is None and trace.events
        return
    assert m.stopped is not None, "the engine accepted an impossible event"
    line = want["where"].split(":")[0]
    assert m.stopped.line == int(line) and m.stopped.code == "IMPOSSIBLE_EVENT"
    assert want["reason"] in m.stopped.message, m.stopped.message
    # what came before stays: the steps up to the stop are all there
    assert m.nr_steps == len(m.steps)
