"""ChunkedDict (explorer.model.chunked) against a plain dict, with checkpoints in between."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.model.chunked import ChunkedDict

keys = st.integers(0, 3000)  # several chunks of 512
ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), keys, st.integers(0, 1 << 40)),
        st.tuples(st.just("del"), keys, st.just(0)),
        st.tuples(st.just("many"), keys, st.integers(1, 40)),
        st.tuples(st.just("freeze"), st.just(0), st.just(0)),
        st.tuples(st.just("delta"), st.just(0), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_it_behaves_like_a_dict_through_checkpoints(script: list[tuple[str, int, int]]) -> None:
    d = ChunkedDict()
    model: dict[int, int] = {}
    copies: list[tuple[ChunkedDict, dict[int, int]]] = []
    follower = ChunkedDict()  # moved forward by deltas only
    for op, k, v in script:
        if op == "set":
            d[k] = v
            model[k] = v
        elif op == "del":
            assert d.pop(k, None) == model.pop(k, None)
        elif op == "many":
            items = {k + i: k * i for i in range(v)}
            d.set_many(items)
            model.update(items)
        elif op == "freeze":
            copies.append((ChunkedDict.from_table(d.frozen_table()), dict(model)))
        else:
            follower.apply(d.delta())
            assert dict(follower) == model
        assert len(d) == len(model)
        assert dict(d) == model
        assert all(d.get(x) == model.get(x) for x in (k, k + 1, k + 511, k + 512))
    for copy, then in copies:  # frozen copies keep the state they were made with
        assert len(copy) == len(then) and dict(copy) == then
        restored = ChunkedDict.from_table(copy.frozen_table())
        restored[7] = 1  # writing to a restored copy leaves the checkpoint alone
        assert dict(copy) == then
