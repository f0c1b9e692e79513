"""Whether a live answer is stored, as a value: plan x reason x outcome x a client that
left x settings, with no socket (the decision after the fetch, as test_decide.py is the
one before it)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from multidict import CIMultiDict

from proxy.config import CacheSettings
from proxy.fetch import Live
from proxy.policy import (
    SERVER_STATE,
    UNSEEDED,
    VERIFY,
    AfterFetch,
    Compare,
    Discard,
    Keep,
    Outcome,
    Plan,
    after_fetch,
    plan_request,
)

ANSWER, ERROR, NOT_ANSWER = Outcome.ANSWER, Outcome.ERROR, Outcome.NOT_ANSWER
RECORD = plan_request("record", None)
REFRESH = plan_request("record", "no-cache")
NO_STORE = plan_request("record", "no-store")
PASSTHROUGH = plan_request("passthrough", None)
STATE = plan_request("record", None, SERVER_STATE)
UNSEEDED_PLAN = plan_request("record", None, UNSEEDED)
REPLAY = plan_request("replay", None)


def cache(complete_on_disconnect: bool = True, verify_replace: bool = False) -> CacheSettings:
    return replace(
        CacheSettings(),
        complete_on_disconnect=complete_on_disconnect,
        verify_replace=verify_replace,
    )


# (plan, reason, outcome, client gone, complete_on_disconnect, verify_replace) -> decision
TABLE = [
    # only a complete 2xx answer is kept
    (RECORD, "absent", ANSWER, False, True, False, Keep()),
    (RECORD, "expired", ANSWER, False, True, False, Keep()),
    (RECORD, "fingerprint", ANSWER, False, True, False, Keep()),
    (REFRESH, "refresh", ANSWER, False, True, False, Keep()),
    (RECORD, "absent", ERROR, False, True, False, Discard("upstream error")),
    (RECORD, "absent", NOT_ANSWER, False, True, False, Discard("not an answer")),
    (REFRESH, "refresh", ERROR, False, True, False, Discard("upstream error")),
    # what the plan keeps out of the cache stays out, whatever came back
    (NO_STORE, "absent", ANSWER, False, True, False, Discard("no-store")),
    (PASSTHROUGH, "absent", ANSWER, False, True, False, Discard("bypass")),
    (STATE, "absent", ANSWER, False, True, False, Discard("bypass")),
    (UNSEEDED_PLAN, "absent", ANSWER, False, True, False, Discard("bypass")),
    (NO_STORE, VERIFY, ANSWER, False, True, True, Discard("no-store")),
    (REPLAY, "absent", ANSWER, False, True, False, Discard("replay")),
    # a streaming client that left: the answer is kept while the upstream is read on
    (RECORD, "absent", ANSWER, True, True, False, Keep()),
    (REFRESH, "refresh", ANSWER, True, True, False, Keep()),
    (RECORD, "absent", ANSWER, True, False, False, Discard("the client left")),
    (RECORD, "absent", ANSWER, False, False, False, Keep()),
    (RECORD, "absent", ERROR, True, True, False, Discard("upstream error")),
    # a verification compares; it replaces the stored answer only with verify_replace
    (RECORD, VERIFY, ANSWER, False, True, False, Compare()),
    (RECORD, VERIFY, ANSWER, False, True, True, Keep()),
    (REPLAY, VERIFY, ANSWER, False, True, True, Keep()),
    (REPLAY, VERIFY, ANSWER, False, True, False, Compare()),
    (RECORD, VERIFY, ERROR, False, True, True, Discard("upstream error")),
    (RECORD, VERIFY, NOT_ANSWER, False, True, False, Discard("not an answer")),
]


@pytest.mark.parametrize(
    ("plan", "reason", "outcome", "gone", "complete", "replace_", "want"), TABLE
)
def test_after_fetch_table(
    plan: Plan,
    reason: str,
    outcome: Outcome,
    gone: bool,
    complete: bool,
    replace_: bool,
    want: AfterFetch,
) -> None:
    assert after_fetch(plan, reason, outcome, gone, cache(complete, replace_)) == want


@pytest.mark.parametrize(
    ("status", "parsed", "want"),
    [
        (200, {"choices": []}, ANSWER),
        (200, None, NOT_ANSWER),  # the fetch left it unparsed: {} or an error object
        (299, None, NOT_ANSWER),
        (429, None, ERROR),
        (500, None, ERROR),
        (199, None, ERROR),
    ],
)
def test_what_a_fetch_brought_back(
    status: int, parsed: dict[str, object] | None, want: Outcome
) -> None:
    assert Live(status, CIMultiDict(), b"{}", parsed).outcome is want
