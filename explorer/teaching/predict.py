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

from dataclasses import dataclass, field

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
#: How far back to look for a CPU's previous step (the steps of concurrent events interleave;
#: a CPU's next step is a few steps later, never hundreds).
LOOKBACK = 256


@dataclass(frozen=True, slots=True)
class Question:
    """One question about a step. ``choices`` is None for a number (``answer`` is its digits)."""

    kind: str
    prompt: str
    choices: tuple[str, ...] | None
    answer: str


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


def _previous_on_cpu(tl: Timeline, step: int, cpu: str) -> Step | None:
    """The last step before ``step`` run by ``cpu`` (None if there is none nearby)."""
    lo = max(step - LOOKBACK, 0)
    for s in reversed(tl.steps_between(lo, step)):
        if s.cpu == cpu:
            return s
    return None


def _changed_regions(s: Step) -> list[int]:
    """Regions whose refcount or pair this step changes, in order of first change."""
    out: list[int] = []
    for e in s.effects:
        if e.kind in ("refcount", "pair") and e.key not in out:
            out.append(int(e.key))
    return out


def _contested(tl: Timeline, step: int) -> bool:
    """Two or more CPUs take the slow path in the step's batch (the events running together):
    a race for one region's pair is possible, so its recheck and the gets that follow the
    winner (fast, since the pair is in) are worth a question; a lone get's are routine."""
    b = tl.batch_of_step(step)
    lo, hi = tl.batch_step[b], tl.batch_step[b + 1]
    cpus = {
        p.cpu
        for p in tl.steps_between(lo, min(hi, lo + 4 * LOOKBACK))
        if p.label == "pamt_get.slow"
    }
    return len(cpus) >= 2


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


def _cache_moves(s: Step, vcpu: int) -> bool:
    """The step drains the vCPU's DPAMT cache (a slow get's pop): a top-up only refills it to
    the count the sidebar shows, which asks nothing."""
    return any(
        e.kind == "pamt_cache" and e.key == vcpu and int(e.new) < int(e.old) for e in s.effects
    )


def _retried_before(tl: Timeline, step: int, s: Step) -> bool:
    """A ``fault.retry`` of the same event on the same CPU before ``step`` (nearby)."""
    lo = max(step - 16 * LOOKBACK, 0)
    return any(
        p.label == RETRY_LABEL and p.cpu == s.cpu and p.event == s.event
        for p in tl.steps_between(lo, step)
    )


def _batch_regions(tl: Timeline, step: int) -> list[int]:
    """Regions whose refcount or pair changes anywhere in the step's batch (the events running
    together): offered whether or not this very step changes them, so being among the choices
    gives nothing away."""
    b = tl.batch_of_step(step)
    lo, hi = tl.batch_step[b], tl.batch_step[b + 1]
    out: list[int] = []
    for s in tl.steps_between(lo, min(hi, lo + 4 * LOOKBACK)):
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


def _cache_after(s: Step, vcpu: int, before: Snapshot) -> int | None:
    """The vCPU's DPAMT cache count after ``s``: the step's own change if it has one, else the
    count before it (None if the vCPU is not in the snapshot)."""
    for e in reversed(s.effects):
        if e.kind == "pamt_cache" and e.key == vcpu:
            return int(e.new)
    for v in before.vcpus:
        if v.vcpu == vcpu:
            return len(v.pamt_cache)
    return None


def questions_at(tl: Timeline, step: int) -> list[Question]:
    """The questions about step ``step`` (the next one to reveal), in the order of
    :data:`KINDS`; empty if the step is outside the timeline or nothing is asked of it."""
    if not 0 <= step < tl.nr_steps:
        return []
    s = tl.step(step)
    fam = family(s.label)
    vcpu = vcpu_id(s.cpu)
    out: list[Question] = []
    if s.label != LOCK_LABEL and fam == "pamt_get" and _contested(tl, step):
        prev = _previous_on_cpu(tl, step, s.cpu)
        if prev is not None and prev.label == LOCK_LABEL and prev.event == s.event:
            out.append(
                Question(
                    "race",
                    f"{s.cpu} has just taken pamt_lock in tdx_pamt_get and rechecks the "
                    "region's refcount. Does it lose the race (another CPU installed the pair "
                    "first)?",
                    RACE_CHOICES,
                    "yes" if s.label == LOST_RACE_LABEL else "no",
                )
            )
    if s.label in PATH_LABELS and (PATH_LABELS[s.label] == "slow" or _contested(tl, step)):
        out.append(
            Question(
                "path",
                f"{s.cpu} enters tdx_pamt_get for a page. Fast path (the region already has "
                "its pair: just count the page) or slow path (a pair must be installed)?",
                PATH_CHOICES,
                PATH_LABELS[s.label],
            )
        )
    # the snapshot before the step (a seek) only where a region or a drain question is asked
    crossed = _crossings(s) if fam in REGION_FAMILIES else []
    drains = vcpu is not None and fam in CACHE_FAMILIES and _cache_moves(s, vcpu)
    before = tl.state_at(step - 1) if crossed or drains else None
    if s.label == RETRY_LABEL or (s.label == DONE_LABEL and _retried_before(tl, step, s)):
        out.append(
            Question(
                "retry",
                f"{s.cpu}'s fault reaches its end after its DPAMT gets. Does it retry (the "
                "cache ran dry: RET_PF_RETRY, fault again) or complete?",
                RETRY_CHOICES,
                "retry" if s.label == RETRY_LABEL else "complete",
            )
        )
    if crossed and before is not None:
        changed = crossed
        if len(changed) == 1:  # one region (always so on the samples)
            regions = _regions_in_play(tl, step, before, changed)
            out.append(
                Question(
                    "region",
                    f"Next, {s.cpu} runs a step of {s.function} that changes a PAMT pair or "
                    "takes a refcount across 0. Which region's?",
                    tuple(f"region {r}" for r in regions),
                    f"region {changed[0]}",
                )
            )
    if vcpu is not None and drains and before is not None:
        count = _cache_after(s, vcpu, before)
        if count is not None:
            out.append(
                Question(
                    "cache",
                    f"Next, {s.cpu} runs a step of {s.function}. How many pages does its DPAMT "
                    "cache hold after it?",
                    None,
                    str(count),
                )
            )
    return out


#: How far past a question already asked a round looks for a moment not asked yet (a race, a
#: retry) before asking the same kind again: a few faults' worth of steps.
LOOKAHEAD = 4 * LOOKBACK


def moment(q: Question) -> tuple[str, str]:
    """What a question is about, for telling a round's moments apart: its kind and, for the
    yes/no kinds, its answer (a lost race and a won one are two lessons; two slow paths, or two
    regions installed, are one)."""
    return (q.kind, q.answer if q.kind in ("race", "retry", "path") else "")


@dataclass
class PredictionSession:
    """A round of ``total`` questions about the steps after ``start`` (the step the learner is
    looking at; -1 before the first).

    Steps that have no question are passed over (their narration stays on the Explore page).
    One question per step; a round goes on to the next moment it has not asked about yet
    (:func:`moment`: a lost race after a won one, a retry after slow paths) within
    :data:`LOOKAHEAD` steps, and only then asks a moment again, so a round of five reaches the
    sample's lesson instead of asking about every cold table. Among a step's questions the kind
    asked least so far is taken. Plain data (ints and
    frozen questions): it lives in Streamlit's session state, and the timeline is passed in."""

    start: int
    total: int
    answered: list[Answered] = field(default_factory=list)
    #: The question on screen, and its step (None before :meth:`advance` and at the end).
    current: Question | None = None
    current_step: int = -1
    #: The step the next search starts after.
    position: int = -1
    #: No step with a question is left in the timeline.
    exhausted: bool = False

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
        """Move to the next step that has a question and put one (None at the end)."""
        self.current = None
        if len(self.answered) >= self.total:
            return None
        i = self.position + 1
        fallback: tuple[int, list[Question]] | None = None
        while i < tl.nr_steps and (fallback is None or i <= fallback[0] + LOOKAHEAD):
            qs = questions_at(tl, i)
            if qs:
                i, qs = self._best_of_event(tl, i, qs)
                fresh = [q for q in qs if moment(q) not in self._asked_moments()]
                if fresh:
                    return self._put(i, fresh)
                if fallback is None:
                    fallback = (i, qs)
            i += 1
        if fallback is not None:  # every moment ahead was asked already: ask one again
            return self._put(*fallback)
        self.position = tl.nr_steps - 1
        self.exhausted = True
        return None

    def _asked_moments(self) -> set[tuple[str, str]]:
        return {moment(a.question) for a in self.answered}

    def _put(self, i: int, qs: list[Question]) -> Question:
        self.current, self.current_step, self.position = self._pick(qs), i, i
        return self.current

    @staticmethod
    def _best_of_event(tl: Timeline, i: int, qs: list[Question]) -> tuple[int, list[Question]]:
        """One question per trace event, at its step that matters most (:data:`KINDS` order:
        the race, then a retry, a pair, a path, a drain): a get's path, pops and pair are one
        story, and a round of a few questions would otherwise spend them all on the first
        fault and never reach the sample's lesson (its race, its retry, its removal)."""
        ev = tl.step(i).event
        b = tl.batch_of_step(i)
        hi = min(tl.batch_step[b + 1], i + 4 * LOOKBACK)
        best, best_qs = i, qs
        for j in range(i + 1, hi):
            if tl.step(j).event != ev:
                continue
            other = questions_at(tl, j)
            if other and min(KINDS.index(q.kind) for q in other) < min(
                KINDS.index(q.kind) for q in best_qs
            ):
                best, best_qs = j, other
        return best, best_qs

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
