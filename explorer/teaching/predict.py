"""Predict the next step: questions about a replay that the engine itself can mark.

Watching steps go by teaches less than guessing each one first. A question here is always about
the step *about to be revealed* (the learner sees the machine after the step before it), and
its answer is read off that step's own record (its label and effects, or the snapshot before it
when the step changes nothing of what is asked), never written by hand: when the engine changes
to follow the kernel more closely, the questions and their answers follow with it.

Questions are asked only at the steps that matter, the moments a lesson is about (the
samples each have one): a race decided under ``pamt_lock``, a get's fast or slow path, a drain of
a vCPU's DPAMT cache (a pop), a refcount crossing 0 (a pair installed or removed),
a fault's retry. Every other step is passed over, and no question has "nothing changes" for an
answer. Kinds of question (:data:`KINDS`):

- ``race``: does this CPU lose the race, at its step right after taking ``pamt_lock`` in a get:
  the recheck under the lock finds the region installed (``pamt_get.lost_race``) or not
  (``tdx_pamt_get``'s recheck, the one v6 adds).
- ``path``: fast or slow path, at a ``tdx_pamt_get`` decision step (``pamt_get.fast`` or
  ``pamt_get.slow``).
- ``retry``: does the fault retry or complete, at the end of a fault that ran its cache dry
  (``fault.retry``, or the ``fault.done`` of a fault that retried before: KVM's RET_PF_RETRY
  after ``tdx_pamt_get`` found the cache empty).
- ``region``: which region's refcount crosses 0 or PAMT pair changes, at the steps that do
  (the pair installed by ``tdx_pamt_add``, removed by ``tdx_pamt_put``'s last reference).
- ``cache``: how many pages the vCPU's DPAMT cache holds after this step (a number), at the
  steps that drain it: a slow get's pop of a pair's pages (filled by ``tdx_topup_pamt_cache``).

No Streamlit here: the app's Learn page drives a :class:`PredictionSession`, the tests drive the
same one.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

from explorer.model.bulk import FLAG_BITS
from explorer.model.records import Snapshot, Step
from explorer.replay.timeline import Timeline

KINDS = ("race", "retry", "path", "region", "cache")
#: Choices of ``path`` and ``race`` questions.
PATH_CHOICES = ("fast", "slow")
RACE_CHOICES = ("yes", "no")
RETRY_CHOICES = ("retry", "complete")
#: A fault's last step: it retries (the cache ran dry) or completes (explorer.model.kvm).
RETRY_LABEL, DONE_LABEL = "fault.retry", "fault.done"
#: Labels of the get's fast/slow decision (explorer.model.narration).
PATH_LABELS = {"pamt_get.fast": "fast", "pamt_get.slow": "slow"}
LOCK_LABEL = "pamt_get.lock"
LOST_RACE_LABEL = "pamt_get.lost_race"
#: Label families whose steps get a ``region`` question: the only steps that change a refcount
#: or a pair (checked over every sample by tests/test_predict.py).
REGION_FAMILIES = ("pamt_get", "pamt_put")
#: Label families whose vCPU steps get a ``cache`` question.
CACHE_FAMILIES = ("pamt_cache", "pamt_get")
#: At most this many regions among the choices of a ``region`` question (the answer always is
#: one of them): a list of a thousand regions is no question.
MAX_REGION_CHOICES = 6


@dataclass(frozen=True, slots=True)
class Question:
    """One question about a step. ``choices`` is None for a number (``answer`` is its digits)."""

    kind: str
    prompt: str
    choices: tuple[str, ...] | None
    answer: str
    #: What the question is about beyond its kind (:func:`moment`): the answer of a yes/no or
    #: a path question, ``installed`` or ``removed`` for a region's pair, empty for a count.
    topic: str = ""


@dataclass(frozen=True, slots=True)
class Answered:
    """A question put to the learner, what they said, and whether it was right."""

    step: int
    question: Question
    given: str
    correct: bool


def family(label: str) -> str:
    """``pamt_get`` for ``pamt_get.lock.spin``: the part of a label before the first dot."""
    return label.split(".", 1)[0]


def vcpu_id(cpu: str) -> int | None:
    """The vCPU id of a simulated CPU named ``vcpu<N>`` (None for a VM thread like ``td0``)."""
    if cpu.startswith("vcpu") and cpu[4:].isdigit():
        return int(cpu[4:])
    return None


def check(q: Question, answer: str | int | float) -> bool:
    """Whether ``answer`` is right: numbers compare as integers (``"8"``, ``8`` and ``8.0`` are
    all 8; text that is no number is wrong), text case-insensitively and without surrounding
    spaces (a radio's choice, or a typed ``Slow``)."""
    if q.choices is None:
        try:
            return int(float(str(answer).strip())) == int(q.answer)
        except ValueError:
            return False
    return str(answer).strip().casefold() == q.answer.strip().casefold()


def _changed_regions(s: Step) -> list[int]:
    """Regions whose refcount or pair this step changes, in order of first change."""
    out: list[int] = []
    for e in s.effects:
        if e.kind in ("refcount", "pair") and e.key not in out:
            out.append(int(e.key))
    return out


def _crossings(s: Step) -> list[int]:
    """Regions whose pair this step changes or whose refcount it takes across 0 (the moments
    a region's DPAMT backing appears or goes), in order of first change."""
    out: list[int] = []
    for e in s.effects:
        moved = e.kind == "pair" or (
            e.kind == "refcount" and (int(e.old or 0) == 0) != (int(e.new or 0) == 0)
        )
        if moved and int(e.key) not in out:
            out.append(int(e.key))
    return out


def _cache_drain(s: Step, vcpu: int) -> int | None:
    """The vCPU's DPAMT cache count after this step if the step drains it (a slow get's pop),
    else None: a top-up only refills it to the count the sidebar shows, which asks nothing."""
    count = None
    for e in s.effects:
        if e.kind == "pamt_cache" and e.key == vcpu and int(e.new) < int(e.old):
            count = int(e.new)
    if count is None:
        return None
    for e in reversed(s.effects):  # the count after the step: its last change of this cache
        if e.kind == "pamt_cache" and e.key == vcpu:
            return int(e.new)
    return count


#: What a moment asks, before its question is written: its kind, its answer (for ``region``,
#: the region's number; for ``cache``, the count), read off the step's own record, and its topic
#: (:attr:`Question.topic`).
Ask = tuple[str, str, str]

#: Batches that may hold a moment: a get's slow path always ends in a pair added or removed (a
#: refcount crossing 0), a lost race, a pair found present, a failed add or a retry, each of
#: which sets one of these flags of the bulk replay (explorer.model.bulk); the contested fast
#: paths and the pops are in the same batch. tests/test_predict.py checks it on every sample.
MOMENT_FLAGS = (
    FLAG_BITS["lost_race"]
    | FLAG_BITS["cache_drained"]
    | FLAG_BITS["refcount_zero"]
    | FLAG_BITS["retry"]
)


def batch_moments(steps: list[Step]) -> list[tuple[int, tuple[Ask, ...]]]:
    """The moments among one batch's steps (the events running together, in step order): each
    step that has a question, with what it asks, in the order of :data:`KINDS`.

    One pass over the batch: an event never spans two batches, so a CPU's previous step of the
    same event (``pamt_lock`` taken just before a race's recheck) and a fault's earlier retry
    are in it, and whether two CPUs take the slow path (a contested get) is a property of it."""
    slow_cpus = {s.cpu for s in steps if s.label == "pamt_get.slow"}
    contested = len(slow_cpus) >= 2
    last_on_cpu: dict[str, Step] = {}
    retried: set[tuple[str, int]] = set()
    out: list[tuple[int, tuple[Ask, ...]]] = []
    for s in steps:
        fam = family(s.label)
        asks: list[Ask] = []
        prev = last_on_cpu.get(s.cpu)
        if (
            contested
            and fam == "pamt_get"
            and s.label != LOCK_LABEL
            and prev is not None
            and prev.label == LOCK_LABEL
            and prev.event == s.event
        ):
            lost = "yes" if s.label == LOST_RACE_LABEL else "no"
            asks.append(("race", lost, lost))
        if s.label == RETRY_LABEL:
            asks.append(("retry", "retry", "retry"))
            retried.add((s.cpu, s.event))
        elif s.label == DONE_LABEL and (s.cpu, s.event) in retried:
            asks.append(("retry", "complete", "complete"))
        if s.label in PATH_LABELS and (PATH_LABELS[s.label] == "slow" or contested):
            asks.append(("path", PATH_LABELS[s.label], PATH_LABELS[s.label]))
        if fam in REGION_FAMILIES:
            crossed = _crossings(s)
            if len(crossed) == 1:  # one region (always so on the samples)
                gone = fam == "pamt_put"  # a put's last reference removes; a get's first installs
                asks.append(("region", str(crossed[0]), "removed" if gone else "installed"))
        vcpu = vcpu_id(s.cpu)
        if vcpu is not None and fam in CACHE_FAMILIES:
            count = _cache_drain(s, vcpu)
            if count is not None:
                asks.append(("cache", str(count), ""))
        if asks:
            asks.sort(key=lambda a: KINDS.index(a[0]))
            out.append((s.index, tuple(asks)))
        last_on_cpu[s.cpu] = s
    return out


class MomentIndex:
    """The moments of one replay, found once: batches are scanned in order as a round needs
    them (only those whose flags say they may hold one) and never again, so a round walks a
    list instead of re-deriving a batch and seeking at every candidate step. Get it with
    :func:`moment_index` (one per timeline)."""

    def __init__(self, tl: Timeline) -> None:
        self._tl = tl
        self._steps: list[int] = []  # steps with a moment, ascending
        self._events: list[int] = []  # the trace event of each
        #: event -> positions of its moments in the lists above (an event is in one batch)
        self._of_event: dict[int, list[int]] = {}
        self._asks: list[tuple[Ask, ...]] = []
        self._scanned = 0  # batches scanned so far
        self._lock = threading.Lock()
        #: batches re-derived so far (the others' flags ruled them out)
        self.batches_read = 0

    @property
    def complete(self) -> bool:
        """Every batch is scanned."""
        return self._scanned >= self._tl.nr_batches

    def _scan_next(self) -> None:
        """Scan the next batch not scanned yet."""
        tl = self._tl
        with self._lock:
            b = self._scanned
            if b >= tl.nr_batches:
                return
            if tl.batch_flags[b] & MOMENT_FLAGS:
                self.batches_read += 1
                steps = tl.steps_between(tl.batch_step[b], tl.batch_step[b + 1])
                event_of = {s.index: s.event for s in steps}
                for i, asks in batch_moments(steps):
                    self._of_event.setdefault(event_of[i], []).append(len(self._steps))
                    self._steps.append(i)
                    self._events.append(event_of[i])
                    self._asks.append(asks)
            self._scanned = b + 1

    def _scan_through(self, step: int) -> None:
        """Scan batches until the one holding ``step`` (or the last) is done."""
        tl = self._tl
        while not self.complete and tl.batch_step[self._scanned] <= step:
            self._scan_next()

    def asks_at(self, step: int) -> tuple[Ask, ...]:
        """What step ``step`` asks (empty if it is no moment)."""
        if not 0 <= step < self._tl.nr_steps:
            return ()
        self._scan_through(step)
        k = bisect.bisect_left(self._steps, step)
        return self._asks[k] if k < len(self._steps) and self._steps[k] == step else ()

    def after(self, step: int) -> Iterator[tuple[int, int, tuple[Ask, ...]]]:
        """The moments after ``step`` (step, event, asks), in order, scanning further batches
        only as the caller goes on."""
        self._scan_through(step)
        k = bisect.bisect_right(self._steps, step)
        while True:
            while k < len(self._steps):
                yield self._steps[k], self._events[k], self._asks[k]
                k += 1
            if self.complete:
                return
            self._scan_next()

    def later_of_event(self, event: int, step: int) -> list[tuple[int, tuple[Ask, ...]]]:
        """The moments of trace event ``event`` after ``step`` (its batch is scanned once one
        of its moments was seen)."""
        return [
            (self._steps[k], self._asks[k])
            for k in self._of_event.get(event, ())
            if self._steps[k] > step
        ]


_INDEXES: weakref.WeakKeyDictionary[Timeline, MomentIndex] = weakref.WeakKeyDictionary()
_INDEXES_LOCK = threading.Lock()


def moment_index(tl: Timeline) -> MomentIndex:
    """The replay's :class:`MomentIndex` (made on first use, kept as long as the timeline: the
    app caches one timeline per trace for every session, so every round on it shares one)."""
    with _INDEXES_LOCK:
        index = _INDEXES.get(tl)
        if index is None:
            index = _INDEXES[tl] = MomentIndex(tl)
        return index


def _batch_regions(tl: Timeline, step: int) -> list[int]:
    """Regions whose refcount or pair changes anywhere in the step's batch (the events running
    together): offered whether or not this very step changes them, so being among the choices
    gives nothing away."""
    b = tl.batch_of_step(step)
    lo, hi = tl.batch_step[b], tl.batch_step[b + 1]
    out: list[int] = []
    for s in tl.steps_between(lo, hi):
        for r in _changed_regions(s):
            if r not in out:
                out.append(r)
    return out


def _regions_in_play(tl: Timeline, step: int, before: Snapshot, answer: list[int]) -> list[int]:
    """The regions to choose from: the one changing now, those changing in the same batch, then
    those with a refcount or a pair before the step, nearest first."""
    picked = list(answer)
    batch = _batch_regions(tl, step)
    live = sorted(set(before.refcount) | set(before.pairs))
    anchor = picked[0] if picked else (batch[0] if batch else (live[-1] if live else 0))
    for group in (batch, live):
        for r in sorted(group, key=lambda r: (abs(r - anchor), r)):
            if len(picked) >= MAX_REGION_CHOICES:
                break
            if r not in picked:
                picked.append(r)
    return sorted(picked)


def questions_at(tl: Timeline, step: int) -> list[Question]:
    """The questions about step ``step`` (the next one to reveal), in the order of
    :data:`KINDS`; empty if the step is outside the timeline or nothing is asked of it. What is
    asked comes from the replay's :class:`MomentIndex`; only a ``region`` question seeks (the
    regions live before the step are among its choices)."""
    asks = moment_index(tl).asks_at(step)
    if not asks:
        return []
    s = tl.step(step)
    out: list[Question] = []
    for kind, answer, topic in asks:
        if kind == "race":
            prompt = (
                f"{s.cpu} has just taken pamt_lock in tdx_pamt_get and rechecks the "
                "region's refcount. Does it lose the race (another CPU installed the pair "
                "first)?"
            )
            out.append(Question(kind, prompt, RACE_CHOICES, answer, topic))
        elif kind == "retry":
            prompt = (
                f"{s.cpu}'s fault reaches its end after its DPAMT gets. Does it retry (the "
                "cache ran dry: RET_PF_RETRY, fault again) or complete?"
            )
            out.append(Question(kind, prompt, RETRY_CHOICES, answer, topic))
        elif kind == "path":
            prompt = (
                f"{s.cpu} enters tdx_pamt_get for a page. Fast path (the region already has "
                "its pair: just count the page) or slow path (a pair must be installed)?"
            )
            out.append(Question(kind, prompt, PATH_CHOICES, answer, topic))
        elif kind == "region":
            regions = _regions_in_play(tl, step, tl.state_at(step - 1), [int(answer)])
            prompt = (
                f"Next, {s.cpu} runs a step of {s.function} that changes a PAMT pair or "
                "takes a refcount across 0. Which region's?"
            )
            out.append(
                Question(
                    kind,
                    prompt,
                    tuple(f"region {r}" for r in regions),
                    f"region {answer}",
                    topic,
                )
            )
        else:
            prompt = (
                f"Next, {s.cpu} runs a step of {s.function}. How many pages does its DPAMT "
                "cache hold after it?"
            )
            out.append(Question(kind, prompt, None, answer, topic))
    return out


def rank(asks: tuple[Ask, ...]) -> int:
    """How much a step's questions matter, least first: the :data:`KINDS` index of the first
    (the race, then a retry, a path, a pair, a drain)."""
    return min(KINDS.index(a[0]) for a in asks)


def _moment_of(a: Ask) -> tuple[str, str]:
    """:func:`moment` of a question not written yet."""
    return (a[0], a[2])


def _fresh(asks: tuple[Ask, ...], asked: set[tuple[str, str]]) -> tuple[Ask, ...]:
    """The asks of a moment not in ``asked``."""
    return tuple(a for a in asks if _moment_of(a) not in asked)


def moment(q: Question) -> tuple[str, str]:
    """What a question is about, for telling a round's moments apart: its kind and its topic (a
    lost race and a won one are two lessons, a pair installed and one removed too; two slow
    paths, or two regions installed, are one)."""
    return (q.kind, q.topic)


@dataclass
class PredictionSession:
    """A round of ``total`` questions about the steps after ``start`` (the step the learner is
    looking at; -1 before the first).

    Steps that have no question are passed over (their narration stays on the Explore page).
    A round asks each moment once (:func:`moment`: a lost race and a won one are two, two slow
    paths one), one question per trace event, at the event's step that matters most among
    those not asked yet (:func:`rank`: its race rather than its pop), and ends early when no
    moment it has not asked is left: so a round of five reaches the sample's lesson instead of
    asking about every cold table. Among a step's questions the kind asked least so far is
    taken. Plain data (ints and frozen questions): it lives in Streamlit's session state, and
    the timeline is passed in."""

    start: int
    total: int
    answered: list[Answered] = field(default_factory=list)
    #: The question on screen, and its step (None before :meth:`advance` and at the end).
    current: Question | None = None
    current_step: int = -1
    #: The step the next search starts after.
    position: int = -1
    #: No moment the round has not asked is left in the timeline.
    exhausted: bool = False
    #: The trace events asked about so far (one question each).
    events: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.position < self.start:
            self.position = self.start

    @property
    def score(self) -> int:
        return sum(a.correct for a in self.answered)

    @property
    def done(self) -> bool:
        return len(self.answered) >= self.total or (self.exhausted and self.current is None)

    def _pick(self, qs: list[Question]) -> Question:
        asked = {k: 0 for k in KINDS}
        for a in self.answered:
            asked[a.question.kind] = asked.get(a.question.kind, 0) + 1
        return min(qs, key=lambda q: (asked.get(q.kind, 0), KINDS.index(q.kind)))

    def advance(self, tl: Timeline) -> Question | None:
        """Move to the next step with a moment not asked yet and put a question (None at the
        end): a walk along the replay's :class:`MomentIndex`, scanned once for every round."""
        self.current = None
        if len(self.answered) >= self.total:
            return None
        asked = self._asked_moments()
        index = moment_index(tl)
        for i, ev, asks in index.after(self.position):
            fresh = _fresh(asks, asked)
            if ev in self.events:  # one question per trace event, but a fault that retried
                fresh = tuple(a for a in fresh if a[0] == "retry")  # may complete after all
            if not fresh:
                continue
            # a get's path, pops, pair and race are one story: wait for the event's step that
            # matters most among those with a moment not asked yet (the race over the pop)
            if any(
                (more := _fresh(later, asked)) and rank(more) < rank(fresh)
                for _, later in index.later_of_event(ev, i)
            ):
                continue
            self.events.append(ev)
            return self._put(tl, i, asked)
        self.position = tl.nr_steps - 1
        self.exhausted = True
        return None

    def _asked_moments(self) -> set[tuple[str, str]]:
        return {moment(a.question) for a in self.answered}

    def _put(self, tl: Timeline, i: int, asked: set[tuple[str, str]]) -> Question:
        """Put a question about step ``i``: one of a moment not in ``asked``, if any."""
        qs = questions_at(tl, i)
        fresh = [q for q in qs if moment(q) not in asked] or qs
        self.current, self.current_step, self.position = self._pick(fresh), i, i
        return self.current

    def answer(self, given: str | int | float) -> Answered:
        """Record the learner's answer to the current question (it stays current, so the page
        can show the verdict until :meth:`advance`)."""
        if self.current is None:
            raise ValueError("no question is open")
        if self.answered and self.answered[-1].step == self.current_step:
            return self.answered[-1]  # answered already (a rerun): the first answer counts
        a = Answered(self.current_step, self.current, str(given), check(self.current, given))
        self.answered.append(a)
        return a

    @property
    def is_answered(self) -> bool:
        """The current question has been answered (its verdict is on screen)."""
        return (
            self.current is not None
            and bool(self.answered)
            and self.answered[-1].step == self.current_step
        )

    def rows(self) -> list[dict[str, object]]:
        """The answers so far, one row each, for a table."""
        return [
            {
                "step": a.step,
                "kind": a.question.kind,
                "question": a.question.prompt,
                "your answer": a.given,
                "answer": a.question.answer,
                "right": a.correct,
            }
            for a in self.answered
        ]
