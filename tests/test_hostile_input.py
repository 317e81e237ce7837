"""Hostile input, round 3 (issue 29): device files, FIFOs, /proc, a gzip bomb, output paths that
cannot be written, bad --workers. Each case exits 2 with a message naming the path and the
reason, never a traceback. Size limits are monkeypatched small so the cases stay fast."""

import gzip
import os
import threading
import zlib
from pathlib import Path

import pytest

from explorer.cli.common import check_output_path
from explorer.cli.main import main
from explorer.ingest import bounded
from explorer.ingest import limits as L
from explorer.ingest.bounded import InputRefused, read_bounded

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"
SMALL = 64 * 1024


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(L, "MAX_UPLOAD_BYTES", SMALL)
    return SMALL


# ------------------------------------------------------------------ the bounded reader
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_endless_device_is_refused_at_the_limit(device: str) -> None:
    with pytest.raises(InputRefused) as e:
        read_bounded(device, SMALL)
    assert e.value.path == device
    assert f"character device has more than {SMALL} bytes, over the limit of {SMALL}" in str(
        e.value
    )


def test_a_regular_file_over_the_limit_is_refused_with_its_size(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"x" * (SMALL + 10))
    with pytest.raises(InputRefused, match=f"is {SMALL + 10} bytes, over the limit of {SMALL}"):
        read_bounded(str(big), SMALL)
    assert read_bounded(str(big), SMALL + 10) == b"x" * (SMALL + 10)


def test_a_proc_file_reporting_size_0_is_read_whole() -> None:
    data = read_bounded("/proc/self/status", SMALL)
    assert b"VmRSS" in data or b"Name:" in data
    with pytest.raises(InputRefused, match="more than 16 bytes"):
        read_bounded("/proc/self/status", 16)


def test_a_fifo_with_an_endless_writer_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    stop = threading.Event()

    def writer() -> None:
        try:
            with open(fifo, "wb") as f:
                while not stop.is_set():
                    f.write(b"{}\n" * 4096)
        except BrokenPipeError:  # the reader refused and closed its end
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        with pytest.raises(InputRefused, match=f"FIFO has more than {SMALL} bytes"):
            read_bounded(str(fifo), SMALL)
    finally:
        stop.set()
    t.join(10)
    assert not t.is_alive()


def test_a_fifo_whose_writer_is_silent_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounded, "IDLE_TIMEOUT_S", 0.2)
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(InputRefused, match=r"no data for 0.2 s from the FIFO \(after 0 bytes\)"):
        read_bounded(str(fifo), SMALL)


def test_a_fifo_with_a_finite_writer_is_read_whole(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    payload = (SAMPLES / "lost_race.jsonl").read_bytes()

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(payload)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    assert read_bounded(str(fifo), SMALL) == payload
    t.join(10)


def test_stdin_is_bounded_too(tmp_path: Path) -> None:
    with open("/dev/zero", "rb") as zero, pytest.raises(InputRefused, match="<stdin>"):
        read_bounded("-", SMALL, stdin=zero)


def test_a_directory_and_a_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputRefused, match="is a directory"):
        read_bounded(str(tmp_path), SMALL)
    with pytest.raises(InputRefused, match="cannot read the file: No such file"):
        read_bounded(str(tmp_path / "nope"), SMALL)


# ------------------------------------------------------------------ the CLI reads through it
@pytest.mark.parametrize("command", ["check", "replay", "sweep"])
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_every_trace_command_refuses_a_device_with_exit_2(
    command: str, device: str, small_limit: int, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, device]
    if command == "sweep":
        argv += ["--vary", "dpamt_gets_per_fault=0..1", "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"over the limit of {small_limit} bytes (MAX_UPLOAD_BYTES)" in err
    assert "Traceback" not in err


def test_check_refuses_a_proc_file_as_a_trace_not_as_a_crash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "/proc/self/status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("status:") and "Traceback" not in err


def test_a_gzip_bomb_is_refused_at_the_cap_not_after_inflating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """64 MiB of newlines in 64 KiB of gzip; the cap set to 1 MiB: refused at the cap (the
    parser inflates chunk by chunk, checking the running size)."""
    monkeypatch.setattr(L, "MAX_DECOMPRESSED_BYTES", 1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\n" * (1 << 20)
    bomb = b"".join(c.compress(block) for _ in range(64)) + c.flush()
    assert len(bomb) < 200_000
    path = tmp_path / "bomb.jsonl.gz"
    path.write_bytes(bomb)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the gzip data expands past 1048576 bytes (MAX_DECOMPRESSED_BYTES)" in err


def test_a_normal_trace_still_reads(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["check", str(SAMPLES / "lost_race.jsonl")]) == 0
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress((SAMPLES / "lost_race.jsonl").read_bytes()))
    assert main(["check", str(gz)]) == 0


# ------------------------------------------------------------------ output paths
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("{tmp}/missing/x.csv", "the directory {tmp}/missing does not exist"),
        ("/proc/x.csv", "under /proc"),
        ("/proc/self/status", "under /proc"),
        ("/dev/full", "is a device"),
        ("/dev/null", "is a device"),
        ("{tmp}", "is a directory"),
        ("{tmp}/file/x.csv", "{tmp}/file is not a directory"),
    ],
)
def test_an_unwritable_output_is_named_with_the_reason(
    tmp_path: Path, path: str, reason: str
) -> None:
    from explorer.cli.common import UsageError

    (tmp_path / "file").write_text("")
    path, reason = path.format(tmp=tmp_path), reason.format(tmp=tmp_path)
    with pytest.raises(UsageError) as e:
        check_output_path(path, "--out")
    assert str(e.value).startswith(f"--out {path}: ") and reason in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    from explorer.cli.common import UsageError

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="is not writable"):
            check_output_path(str(ro / "x.csv"))
    finally:
        ro.chmod(0o700)


SWEEP = ["sweep", str(SAMPLES / "lost_race.jsonl"), "--vary", "dpamt_gets_per_fault=0..1"]


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--out", "{tmp}/missing/s.csv"], "--out {tmp}/missing/s.csv: the directory"),
        (["--out", "/proc/s.parquet"], "--out /proc/s.parquet: under /proc"),
        (["--out", "-", "--plot", "/dev/full"], "--plot /dev/full: is a device"),
        (["--out", "-", "--plot", "{tmp}/missing/p.html"], "--plot {tmp}/missing/p.html"),
        (["--workers", "0"], "--workers 0: must be 1 or more"),
        (["--workers", "-3"], "--workers -3: must be 1 or more"),
    ],
)
def test_sweep_refuses_bad_outputs_and_workers_before_any_work(
    tmp_path: Path,
    extra: list[str],
    said: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import explorer.sweeps.sweep as sw

    def never(*a: object, **k: object) -> None:
        raise AssertionError("the sweep started")

    monkeypatch.setattr(sw, "run_sweep", never)
    argv = [*SWEEP, *(a.format(tmp=tmp_path) for a in extra)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said.format(tmp=tmp_path) in err and "Traceback" not in err


@pytest.mark.parametrize("cpus", [1, 2, 16])
def test_workers_above_four_per_cpu_are_refused_with_the_reason(
    cpus: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--workers`` is bounded by the CPUs this process may use (its affinity, faked here), for
    sweep and explore-grid alike; the bound itself passes the check, one more is refused before
    a cluster or a search starts."""
    import explorer.cli.common as cc
    import explorer.interleavings.grid as grid
    import explorer.sweeps.sweep as sw

    def never(*a: object, **k: object) -> None:
        raise AssertionError("the work started")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(sw, "run_sweep", never)
    monkeypatch.setattr(grid, "dask_client", never)
    monkeypatch.setattr(grid, "run_exploration", never)
    top = cc.MAX_WORKERS_PER_CPU * cpus
    assert cc.max_workers() == top
    assert cc.workers_problem(top) is None
    said = f"--workers {top + 1}: at most {top} (4 per CPU, {cpus} CPUs here)"
    assert main([*SWEEP, "--workers", str(top + 1)]) == 2
    err = capsys.readouterr().err
    assert said in err and "CPU-bound" in err and "Traceback" not in err
    grid_argv = ["explore-grid", str(SAMPLES / "lost_race.jsonl"), "--out", "-"]
    for bad, why in [(top + 1, said), (0, "--workers 0: must be 1 or more")]:
        assert main([*grid_argv, "--workers", str(bad)]) == 2
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err


def test_sweep_plot_is_written_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "p.html"
    argv = [*SWEEP, "--workers", "1", "--out", str(tmp_path / "s.csv"), "--plot", str(plot)]
    assert main(argv) == 0
    assert plot.read_text().rstrip().endswith("</html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.html", "s.csv"]  # no temp left


@pytest.mark.parametrize("name", ["missing/t.jsonl", "missing/t.jsonl.gz"])
def test_generate_into_a_missing_directory_is_a_usage_error(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / name
    assert main(["generate", "boot", "--faults", "10", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"-o {out}: the directory {out.parent} does not exist" in err


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_generate_writes_whole_files_through_a_temp(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / name
    assert main(["generate", "boot", "--faults", "50", "-o", str(out)]) == 0
    assert main(["check", str(out)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_generate_that_fails_midway_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A write error after the start (here: the disk fills after 64 KiB) is exit 2 with the
    path, and the file promised is the old one, untouched, with no temporary left beside it."""
    import explorer.cli.traces as traces

    out = tmp_path / "t.jsonl"
    out.write_text("old\n")
    real = traces._write_lines

    def full_disk(text, first, lines):  # type: ignore[no-untyped-def]
        text.write(first + "\n")
        text.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(traces, "_write_lines", full_disk)
    assert main(["generate", "boot", "--faults", "5000", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: the write failed: No space left on device" in err
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]
    assert real is not full_disk


# ------------------------------------------------------------------ memory after sessions end
def test_the_idle_trimmer_collects_and_trims_once_after_activity_goes_quiet() -> None:
    """After a burst of script runs the server collects and trims once, ``idle_s`` after the
    last run, and not while runs keep coming, nor again without new activity."""
    from explorer.appsupport import IdleTrimmer

    now = [100.0]
    trims: list[float] = []
    t = IdleTrimmer(idle_s=5.0, trim=lambda: trims.append(now[0]), clock=lambda: now[0])
    assert not t.poll()  # nothing happened yet
    for _ in range(10):  # a session stepping every second
        t.touch()
        now[0] += 1.0
        assert not t.poll()
    now[0] += 3.9  # 4.9 s since the last run
    assert not t.poll() and trims == []
    now[0] += 0.2
    assert t.poll() and trims == [now[0]] and t.trims == 1
    now[0] += 60
    assert not t.poll() and t.trims == 1  # idle: nothing new to give back
    t.touch()
    now[0] += 5
    assert t.poll() and t.trims == 2


def test_the_idle_trimmer_drops_a_speed_cache_once_the_app_is_idle_longer() -> None:
    """An ``on_idle`` function (the step windows' memo dropped) runs once, ``idle_s`` of its
    own after the last run, then the memory is collected and trimmed; not while runs come,
    not again without new activity."""
    from explorer.appsupport import IdleTrimmer

    now = [0.0]
    trims: list[float] = []
    dropped: list[float] = []
    t = IdleTrimmer(idle_s=5.0, trim=lambda: trims.append(now[0]), clock=lambda: now[0])
    t.on_idle(lambda: dropped.append(now[0]), 30.0)
    t.touch()
    now[0] += 5
    assert t.poll() and dropped == [] and trims == [5.0]  # the plain trim first
    now[0] += 24.9
    assert not t.poll() and dropped == []
    now[0] += 0.1
    assert t.poll() and dropped == [30.0] and trims == [5.0, 30.0]  # dropped, then trimmed
    now[0] += 100
    assert not t.poll() and dropped == [30.0]
    t.touch()  # activity again: due again 30 s after it
    now[0] += 29
    t.poll()
    assert dropped == [30.0]
    now[0] += 1
    assert t.poll() and dropped == [30.0, 160.0]


def test_large_blocks_get_their_own_mapping_once_asked() -> None:
    """After :func:`mmap_large_blocks`, 96 KB blocks that the heap's top cannot hold get
    mappings of their own (glibc's ``mallinfo2().hblks``); with glibc's default threshold (128
    KB) they all come from the heap. Checked in a child process, on glibc only."""
    import ctypes.util
    import subprocess
    import sys

    if ctypes.util.find_library("c") is None or sys.platform != "linux":
        pytest.skip("glibc only")
    probe = (
        "import ctypes, ctypes.util, sys\n"
        "from explorer.appsupport import mmap_large_blocks\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
        "class M(ctypes.Structure): _fields_ = [(n, ctypes.c_size_t) for n in\n"
        "    'arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost'.split()]\n"
        "libc.mallinfo2.restype = M\n"
        "libc.malloc.restype = ctypes.c_void_p; libc.malloc.argtypes = [ctypes.c_size_t]\n"
        "if sys.argv[1] == 'on': assert mmap_large_blocks()\n"
        "before = libc.mallinfo2().hblks\n"
        "blocks = [libc.malloc(96 * 1024) for _ in range(64)]\n"
        "print(libc.mallinfo2().hblks - before)\n"
    )
    mapped = {}
    for mode in ("off", "on"):
        out = subprocess.run(
            [sys.executable, "-c", probe, mode], capture_output=True, text=True, check=False
        )
        if "mallinfo2" in out.stderr:
            pytest.skip("no mallinfo2 (glibc before 2.33)")
        assert out.returncode == 0, out.stderr
        mapped[mode] = int(out.stdout)
    assert mapped["off"] == 0 and mapped["on"] >= 32, mapped


def test_the_idle_trimmer_thread_runs_and_stops() -> None:
    from explorer.appsupport import IdleTrimmer

    done = threading.Event()
    t = IdleTrimmer(idle_s=0.0, poll_s=0.01, trim=done.set).start()
    t.touch()
    assert done.wait(10)
    t.stop()
    assert t._thread is not None and not t._thread.is_alive()


def test_sweep_refuses_a_parquet_it_cannot_resume_before_any_point_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stray file, or another tool's Parquet (explore-grid's catalogue), at ``--out`` was a
    traceback (pyarrow's, or a KeyError after every point had run): now a usage error first.
    An empty file is a sweep not yet written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    stray = tmp_path / "stray.parquet"
    stray.write_bytes(b"PAR1garbage")
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"trace": ["x"], "outcomes": [3]}), other)
    for path, said in (
        (stray, "is not a Parquet file a sweep can resume"),
        (other, "other columns"),
    ):
        assert main([*SWEEP, "--workers", "1", "--out", str(path)]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err
        assert not (tmp_path / f"{path.name}.parts").exists()
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    assert main([*SWEEP, "--workers", "1", "--out", str(empty)]) == 0
    assert len(pq.read_table(empty)) == 2


def test_a_sweep_csv_cut_in_the_middle_of_a_row_resumes_cleanly(tmp_path: Path) -> None:
    """The partial last row (a kill or a full disk mid-row) is dropped and its point run again:
    the rows appended on resume used to be glued to it."""
    import csv

    out = tmp_path / "s.csv"
    vary = ["sweep", str(SAMPLES / "lost_race.jsonl"), "--vary", "dpamt_gets_per_fault=0..2"]
    assert main([*vary, "--workers", "1", "--out", str(out)]) == 0
    whole = out.read_bytes()
    out.write_bytes(whole[: whole.rfind(b"\n", 0, len(whole) - 1) + 20])  # 19 bytes of row 3
    assert main([*vary, "--workers", "1", "--out", str(out)]) == 0
    with out.open(newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 4 and {len(r) for r in rows} == {len(rows[0])}
    assert sorted(r[rows[0].index("key")] for r in rows[1:]) == sorted(
        r[rows[0].index("key")] for r in csv.reader(whole.decode().splitlines()[1:])
    )


@pytest.mark.parametrize("kind", ["generate", "import", "explore"])
def test_a_written_trace_is_what_its_name_says(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trace written as ``x.csv`` was JSON Lines the readers then took for CSV, and one
    written as ``x.jsonl.gz`` was plain text: now ``.csv`` is refused before any work, and
    ``.gz`` is compressed, and ``check`` reads what was written."""

    def argv(out: Path) -> list[str]:
        if kind == "generate":
            return ["generate", "churn", "--vcpus", "2", "--faults", "20", "-o", str(out)]
        if kind == "import":
            cap = str(SAMPLES / "captures" / "conforming.txt")
            return ["import", cap, "-o", str(out)]
        sample = str(SAMPLES / "lost_race.jsonl")
        return ["explore", sample, "--write-pinned", str(out)]

    bad = tmp_path / "x.csv"
    assert main(argv(bad)) == 2
    assert "name it .jsonl" in capsys.readouterr().err and not bad.exists()
    good = tmp_path / "x.jsonl.gz"
    assert main(argv(good)) in (0, 1)
    assert good.read_bytes()[:2] == b"\x1f\x8b"
    capsys.readouterr()
    assert main(["check", str(good)]) == 0


def test_messages_name_the_cause(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Round 16's unclear messages, each now saying what to change: a second header line, a CSV
    with CR-only line ends, a setting varied twice, the generator's --zap-ratio, a capture name
    with an escape character (printed escaped, as a trace's name is)."""
    joined = tmp_path / "joined.jsonl"
    head = '{"format": "dpamt-trace", "version": 1, "title": "t"}\n'
    joined.write_text(head + '{"op": "td_create", "td": 0}\n' + head)
    assert main(["check", str(joined)]) == 2
    said = capsys.readouterr()
    assert "joined.jsonl:3:1: a header line" in said.out + said.err
    cr = tmp_path / "cr.csv"
    cr.write_bytes(b"op,td\rtd_create,0\rtd_create,1\r")
    assert main(["check", str(cr)]) == 2
    out = capsys.readouterr()
    assert "CR-only line ends" in out.out + out.err and "universal-newline" not in out.out + out.err
    assert main([*SWEEP[:2], "--vary", "mode=v6", "--vary", "mode=v6-locked"]) == 2
    assert "mode is varied twice" in capsys.readouterr().err
    assert main(["generate", "churn", "--zap-ratio", "5", "-o", str(tmp_path / "g.jsonl")]) == 2
    assert "--zap-ratio 5.0: must be in 0..1" in capsys.readouterr().err
    odd = tmp_path / "e\x1b[31m.txt"
    odd.write_bytes((SAMPLES / "captures" / "conforming.txt").read_bytes())
    assert main(["conform", str(odd)]) == 0
    said = capsys.readouterr().out
    assert "\x1b" not in said and "'e\\x1b[31m.txt'" in said


def test_options_that_change_nothing_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An option that the command would ignore is a usage error that says what it is for
    (they were silently ignored): --compact without --json, --teardown on churn, --zap-ratio
    on boot. Nothing is written."""
    lost = str(SAMPLES / "lost_race.jsonl")
    for argv in (["replay", lost, "--compact"], ["explore", lost, "--compact"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--compact prints --json's object on one line" in err
    out = tmp_path / "g.jsonl"
    assert main(["generate", "churn", "--teardown", "--faults", "10", "-o", str(out)]) == 2
    assert "--teardown is boot's" in capsys.readouterr().err
    assert main(["generate", "boot", "--zap-ratio", "0.5", "--faults", "10", "-o", str(out)]) == 2
    assert "--zap-ratio is churn's" in capsys.readouterr().err
    assert not out.exists()
    assert main(["generate", "churn", "--faults", "10", "-o", str(out)]) == 0
    assert "zaps at 30%" in out.read_text().splitlines()[0]
    assert main(["replay", lost, "--json", "--compact"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
