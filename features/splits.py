"""Temporal leave-last-out splits per user, with nothing from validation or test leaking into training.

Each user's events are ordered by (timestamp, request id or source row). A *request* is the group of rows
shown together (same ``request_id``; without request ids every row is its own request). The user's last
request that holds a positive is the test request, the one before it the validation request; training keeps
only the requests before the validation request. Everything later than the validation request is out of
training: the held-out requests themselves and any rows between or after them (counted in the report).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.schema import REQUEST_ID, TIMESTAMP, USER_ID, Dataset


@dataclass(frozen=True)
class SplitReport:
    """Counts that explain the split.

    Attributes:
        users: Users with at least one interaction.
        users_held_out: Users with a validation and a test request.
        users_too_few: Users with fewer than ``min_positive_requests`` positive requests; all their rows are
            training rows and they get no held-out request.
        train_rows: Rows in the training split.
        validation_rows: Rows of validation requests (``validation_pairs``).
        test_rows: Rows of test requests (``test_pairs``).
        rows_after_validation: Rows of held-out users after the validation request that are in neither
            held-out request (e.g. impressions without a positive): kept out of training, used for nothing.
    """

    users: int
    users_held_out: int
    users_too_few: int
    train_rows: int
    validation_rows: int
    test_rows: int
    rows_after_validation: int

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Split:
    """A temporal leave-last-out split.

    Attributes:
        train: Training rows (index labels are those of ``dataset.interactions``).
        validation: The positive rows of each held-out user's validation request (the targets).
        test: The positive rows of each held-out user's test request (the targets).
        validation_pairs: All rows of the validation requests (labelled pairs, impressions included).
        test_pairs: All rows of the test requests.
        report: Counts, see `SplitReport`.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    validation_pairs: pd.DataFrame
    test_pairs: pd.DataFrame
    report: SplitReport


def temporal_leave_last_out(dataset: Dataset, *, min_positive_requests: int = 3) -> Split:
    """Splits each user's sequence: last positive request is test, the one before validation, earlier train.

    Args:
        dataset: The data set; its interactions frame's index labels identify rows (loaders give a
            RangeIndex, so labels are source row positions and order equal-time rows of a sequence file).
        min_positive_requests: Users with fewer positive requests than this keep all their rows in training
            and are counted in ``report.users_too_few``. At least 2 (a validation and a test request).

    Returns:
        A `Split`.

    Example:
        >>> split = temporal_leave_last_out(dataset)
        >>> split.report.users_held_out, len(split.test)
    """
    if min_positive_requests < 2:
        raise ValueError(
            "`min_positive_requests` should be an integer >= 2 (a validation and a test request). "
            f"Received: min_positive_requests={min_positive_requests}"
        )
    frame = dataset.interactions
    n = len(frame)
    users = frame[USER_ID].to_numpy()
    times = frame[TIMESTAMP].to_numpy()
    seq = frame[REQUEST_ID].to_numpy() if dataset.schema.has_request_id else frame.index.to_numpy()
    user_codes = pd.factorize(users, sort=True)[0]
    seq_codes = pd.factorize(seq, sort=True)[0]
    if dataset.schema.has_request_id:
        # A request is one unit in time even if its rows carry different timestamps: it starts at its first.
        keys = pd.DataFrame({"user": user_codes, "seq": seq_codes, "time": times})
        times = keys.groupby(["user", "seq"], sort=False)["time"].transform("min").to_numpy()
    order = np.lexsort((seq_codes, times, user_codes))
    su, st, ss = user_codes[order], times[order], seq_codes[order]
    positive = dataset.positive_mask().to_numpy()[order]

    # Requests: runs of equal (user, time, seq) in sorted order.
    new_request = np.ones(n, dtype=bool)
    new_request[1:] = (su[1:] != su[:-1]) | (st[1:] != st[:-1]) | (ss[1:] != ss[:-1])
    request = np.cumsum(new_request) - 1
    num_requests = int(request[-1]) + 1 if n else 0
    request_positive = np.bincount(request, weights=positive, minlength=num_requests) > 0
    request_user = su[new_request]

    # Rank positive requests from the end within each user: 0 = last (test), 1 = second to last (validation).
    pos_requests = np.flatnonzero(request_positive)
    pos_users = request_user[pos_requests]
    num_users = int(user_codes.max()) + 1 if n else 0
    pos_count = np.bincount(pos_users, minlength=num_users)
    user_end = np.cumsum(pos_count)
    rank_from_end = user_end[pos_users] - 1 - np.arange(len(pos_requests))
    eligible_user = pos_count >= min_positive_requests
    test_request = np.full(num_users, -1, dtype=np.int64)
    val_request = np.full(num_users, -1, dtype=np.int64)
    keep = eligible_user[pos_users]
    test_request[pos_users[keep & (rank_from_end == 0)]] = pos_requests[keep & (rank_from_end == 0)]
    val_request[pos_users[keep & (rank_from_end == 1)]] = pos_requests[keep & (rank_from_end == 1)]

    row_val = val_request[su]
    row_test = test_request[su]
    held_user = row_val >= 0
    is_train = ~held_user | (request < row_val)
    is_val = held_user & (request == row_val)
    is_test = held_user & (request == row_test)
    after = held_user & ~is_train & ~is_val & ~is_test

    def rows(mask: np.ndarray) -> pd.DataFrame:
        return frame.iloc[np.sort(order[mask])]

    train = rows(is_train)
    validation_pairs, test_pairs = rows(is_val), rows(is_test)
    validation, test = rows(is_val & positive), rows(is_test & positive)
    present_users = np.unique(user_codes)
    report = SplitReport(
        users=len(present_users),
        users_held_out=int(eligible_user[present_users].sum()),
        users_too_few=int((~eligible_user[present_users]).sum()),
        train_rows=len(train),
        validation_rows=len(validation_pairs),
        test_rows=len(test_pairs),
        rows_after_validation=int(after.sum()),
    )
    return Split(
        train=train,
        validation=validation,
        test=test,
        validation_pairs=validation_pairs,
        test_pairs=test_pairs,
        report=report,
    )
