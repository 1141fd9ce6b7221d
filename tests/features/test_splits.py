"""Temporal leave-last-out: hand-checked on a tiny shop, and no future row ever reaches training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import features
from features import Dataset, LabelSpec, Schema, temporal_leave_last_out


def test_tiny_shop_split_by_hand(tiny_shop: Dataset) -> None:
    split = temporal_leave_last_out(tiny_shop)
    by_user = lambda frame: {u: sorted(g["request_id"].unique().tolist()) for u, g in frame.groupby("user_id")}  # noqa: E731
    # user 1: positive requests 1, 2, 3, 4 -> test 4, validation 3, train 1-2; request 5 (no positive) is after.
    # user 2: two positive requests < 3 -> all training. user 3: 8, 9, 10 -> test 10, validation 9, train 8.
    assert by_user(split.train) == {1: [1, 2], 2: [6, 7], 3: [8]}
    assert by_user(split.validation_pairs) == {1: [3], 3: [9]}
    assert by_user(split.test_pairs) == {1: [4], 3: [10]}
    assert split.validation["item_id"].tolist() == [11, 12]  # request 3's impression of item 13 is not a target
    assert len(split.validation_pairs) == 3
    assert split.test["item_id"].tolist() == [10, 11]
    r = split.report
    assert (r.users, r.users_held_out, r.users_too_few) == (3, 2, 1)
    assert (r.train_rows, r.validation_rows, r.test_rows, r.rows_after_validation) == (6, 3, 2, 1)
    assert r.train_rows + r.validation_rows + r.test_rows + r.rows_after_validation == len(tiny_shop.interactions)


def test_min_positive_requests_is_validated(tiny_shop: Dataset) -> None:
    with pytest.raises(ValueError, match=r"`min_positive_requests` should be an integer >= 2.*Received: .*=1"):
        temporal_leave_last_out(tiny_shop, min_positive_requests=1)


def _random_shop(seed: int, *, with_requests: bool) -> Dataset:
    rng = np.random.default_rng(seed)
    n = 3000
    users = rng.integers(0, 80, n)
    times = rng.integers(0, 50, n)  # many ties on purpose
    interactions = pd.DataFrame(
        {
            "user_id": users.astype(np.int64),
            "item_id": rng.integers(0, 200, n).astype(np.int64),
            "timestamp": times.astype(np.int64),
            "label": rng.integers(0, 4, n).astype(np.int64),
        }
    )
    if with_requests:
        # A request is a (user, time) pair, as in a shop log.
        interactions["request_id"] = (users * 1000 + times).astype(np.int64)
    items = pd.DataFrame({"item_id": np.arange(200, dtype=np.int64)})
    schema = Schema(label=LabelSpec(kind="graded", min=0, max=3, positive_threshold=2), has_request_id=with_requests)
    return Dataset(name="random", schema=schema, interactions=interactions, items=items)


def _order_key(ds: Dataset, frame: pd.DataFrame) -> pd.Series:
    seq = frame["request_id"] if ds.schema.has_request_id else pd.Series(frame.index, index=frame.index)
    return pd.Series(list(zip(frame["timestamp"], seq, strict=True)), index=frame.index)


@pytest.mark.parametrize("with_requests", [True, False])
def test_nothing_from_validation_or_test_precedes_or_joins_training(with_requests: bool) -> None:
    ds = _random_shop(0, with_requests=with_requests)
    split = temporal_leave_last_out(ds)
    assert split.report.users_held_out > 50
    # The four parts partition the rows: none lost, none shared.
    parts = [split.train.index, split.validation_pairs.index, split.test_pairs.index]
    all_rows = np.concatenate([p.to_numpy() for p in parts])
    assert len(np.unique(all_rows)) == len(all_rows)
    assert len(all_rows) + split.report.rows_after_validation == len(ds.interactions)
    train_key = _order_key(ds, split.train)
    val_key = _order_key(ds, split.validation_pairs)
    test_key = _order_key(ds, split.test_pairs)
    for user, val_rows in split.validation_pairs.groupby("user_id"):
        val = val_key.loc[val_rows.index].iloc[0]
        test = test_key.loc[split.test_pairs.index[split.test_pairs["user_id"] == user]].iloc[0]
        user_train = train_key.loc[split.train.index[split.train["user_id"] == user]]
        assert (user_train < val).all(), f"user {user}: a training row is not before validation"
        assert val < test
        # Validation and test requests are the user's last two positive requests.
        later = ds.interactions[(ds.interactions["user_id"] == user)]
        later_keys = _order_key(ds, later)
        positives = later[(later["label"] >= 2) & (later_keys > test).to_numpy()]
        assert positives.empty


def _naive_history(ds: Dataset, events: pd.DataFrame, source: pd.DataFrame, max_history: int) -> list[list[int]]:
    has_request = ds.schema.has_request_id
    result = []
    positives = source[source["label"] >= ds.schema.label.positive_threshold]
    for index, event in events.iterrows():
        mine = positives[positives["user_id"] == event["user_id"]]
        keys = []
        for j, row in mine.iterrows():
            seq = row["request_id"] if has_request else j
            keys.append(((row["timestamp"], seq), row["item_id"]))
        event_key = (event["timestamp"], event["request_id"] if has_request else index)
        before = sorted([k for k in keys if k[0] < event_key], key=lambda k: k[0])
        result.append([item for _, item in reversed(before)][:max_history])
    return result


@pytest.mark.parametrize("with_requests", [True, False])
def test_query_histories_equal_a_naive_loop(with_requests: bool) -> None:
    ds = _random_shop(1, with_requests=with_requests)
    split = temporal_leave_last_out(ds)
    events = split.test.iloc[:60]
    queries = features.build_queries(events, ds, max_history=5)
    expected = _naive_history(ds, events, ds.interactions, 5)
    got = [queries.history[i, : queries.history_length[i]].tolist() for i in range(len(events))]
    assert got == expected
    # Training histories come from training rows only.
    train_events = split.train.iloc[:80]
    train_queries = features.build_queries(train_events, ds, history_source=split.train, max_history=5)
    expected_train = _naive_history(ds, train_events, split.train, 5)
    assert [train_queries.history[i, : train_queries.history_length[i]].tolist() for i in range(80)] == expected_train


def test_tiny_shop_queries_by_hand(tiny_shop: Dataset) -> None:
    split = temporal_leave_last_out(tiny_shop)
    test_queries = features.build_queries(split.test, tiny_shop, max_history=4)
    # User 1's test request (t=400) sees positives of requests 3, 2, 1, most recent first.
    assert test_queries.history[0].tolist() == [11, 12, 10, 0]
    assert test_queries.history_length.tolist() == [3, 2]
    assert test_queries.query.tolist() == ["red pen", ""]
    assert test_queries.context["device"].tolist() == ["app", "app"]
    assert test_queries.user_attributes["segment"].tolist() == ["a", "a"]
    train_queries = features.build_queries(split.train, tiny_shop, history_source=split.train, max_history=4)
    # Rows of request 1 (items 10 and 11) see nothing, not even each other; request 2 sees item 10.
    lengths = dict(zip(split.train.index, train_queries.history_length.tolist(), strict=True))
    assert lengths[0] == 0 and lengths[1] == 0 and lengths[2] == 1


def test_unknown_user_gets_missing_attributes(tiny_shop: Dataset) -> None:
    events = tiny_shop.interactions.iloc[[0]].assign(user_id=42)
    queries = features.build_queries(events, tiny_shop)
    assert queries.history_length.tolist() == [0]
    assert queries.user_attributes["segment"].tolist() == [None]


def test_query_batch_checks_lengths() -> None:
    with pytest.raises(ValueError, match=r"`query` should have one entry per query \(2 from `user_id`\). Received: 1"):
        features.QueryBatch(
            user_id=np.array([1, 2]),
            query=np.array(["a"], dtype=object),
            history=np.zeros((2, 3), dtype=np.int64),
            history_length=np.zeros(2, dtype=np.int32),
            timestamp=np.zeros(2),
        )


def test_real_splits_report_users(movielens: Dataset, amazon: Dataset) -> None:
    amazon_split = temporal_leave_last_out(amazon)
    # 5-core: every user has >= 5 purchases, so every user is held out with one validation and one test item.
    assert amazon_split.report.users_held_out == 4905 and amazon_split.report.users_too_few == 0
    assert len(amazon_split.test) == len(amazon_split.validation) == 4905
    assert len(amazon_split.train) == 53_258 - 2 * 4905
    ml_split = temporal_leave_last_out(movielens)
    r = ml_split.report
    assert r.users == 943 and r.users_held_out + r.users_too_few == 943
    assert r.train_rows + r.validation_rows + r.test_rows + r.rows_after_validation == 100_000


def test_a_request_with_several_timestamps_is_one_unit(tiny_shop: Dataset) -> None:
    # Request 3 of user 1 spans t=300 and t=301: its rows must neither see each other nor be split apart.
    tiny_shop.interactions.loc[4, "timestamp"] = 301
    split = temporal_leave_last_out(tiny_shop)
    assert sorted(split.validation_pairs.loc[split.validation_pairs["user_id"] == 1, "request_id"]) == [3, 3]
    queries = features.build_queries(split.validation_pairs, tiny_shop, max_history=4)
    # User 1's two rows see items 12 and 10 of requests 2 and 1, not each other; user 3 sees request 8.
    assert queries.history_length.tolist() == [2, 2, 1]


def test_missing_context_column_is_an_error(tiny_shop: Dataset) -> None:
    with pytest.raises(ValueError, match=r"context column\(s\) \['device'\].*missing \['device'\]"):
        features.build_queries(tiny_shop.interactions.drop(columns=["device"]), tiny_shop)
