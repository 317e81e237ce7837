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


def test_a_table_shares_the_chunks_equal_to_another_dicts() -> None:
    """guest_memfd's table shares the frozen chunks equal to the mappings' (taken just before);
    a chunk that differs is frozen on its own; restored copies are independent."""
    leaves, gmem = ChunkedDict(), ChunkedDict()
    for g in range(1000):  # chunks 0 and 1 equal in both
        leaves[g] = gmem[g] = 5000 + g
    gmem[1500] = 1  # chunk 2: only guest_memfd
    leaves[600] = 42  # chunk 1 differs
    lt = leaves.frozen_table()
    gt = gmem.frozen_table(like=leaves)
    lchunks = dict(zip(lt[0], lt[1], strict=True))
    gchunks = dict(zip(gt[0], gt[1], strict=True))
    # shared: the same two arrays (compiled with mypyc, the tuple around them is a new object)
    assert all(a is b for a, b in zip(gchunks[0], lchunks[0], strict=True))
    assert gchunks[1][0] is not lchunks[1][0] and 2 not in lchunks
    g2, l2 = ChunkedDict.from_table(gt), ChunkedDict.from_table(lt)
    assert dict(g2) == dict(gmem) and dict(l2) == dict(leaves)
    g2[0] = 7  # writing to one restored copy leaves the other and the tables alone
    assert l2[0] == 5000 and ChunkedDict.from_table(lt)[0] == 5000
    leaves[1] = 9  # a later pair of tables: the mappings' chunk 0 is frozen again
    lt2 = leaves.frozen_table()
    gt2 = gmem.frozen_table(like=leaves)
    assert ChunkedDict.from_table(lt2)[1] == 9 and ChunkedDict.from_table(gt2)[1] == 5001
    assert dict(zip(gt2[0], gt2[1], strict=True))[0][0] is gchunks[0][0]  # (unchanged in gmem)
