"""R2DContext.stream_slot: the long-request slots of one caller (tornado layer, no server)."""

from __future__ import annotations

import contextlib

import pytest

from r2d_core.errors import RateLimited
from r2d_tornado.base import Identity, R2DContext


def _ctx(limit: int) -> R2DContext:
    return R2DContext(manager=None, authorizer=None, base_url="/", max_streams_per_user=limit)  # type: ignore[arg-type]


def test_a_user_and_a_service_of_one_name_have_their_own_slots():
    # Hub user names and service names are two namespaces: a user named like a service (an
    # open sign-up) must not be able to take the service's slots, nor the other way round
    ctx = _ctx(2)
    user = Identity(name="binder", kind="user", scopes=frozenset())
    service = Identity(name="binder", kind="service", scopes=frozenset())
    with contextlib.ExitStack() as held:
        for _ in range(2):
            held.enter_context(ctx.stream_slot(user))
        with pytest.raises(RateLimited, match="binder has 2 event streams"):
            held.enter_context(ctx.stream_slot(user))
        held.enter_context(ctx.stream_slot(service))  # its own: free
    assert ctx.streams == {}  # every slot given back


def test_one_caller_with_two_tokens_shares_its_slots():
    # the slots are the caller's, not the credential's: a browser cookie and an API token of
    # alice (other scopes) count together
    ctx = _ctx(2)
    cookie = Identity(name="alice", kind="user", scopes=frozenset({"custom:repo2docker:build"}))
    token = Identity(name="alice", kind="user", scopes=frozenset({"custom:repo2docker:read"}))
    with contextlib.ExitStack() as held:
        held.enter_context(ctx.stream_slot(cookie))
        held.enter_context(ctx.stream_slot(token))
        with pytest.raises(RateLimited):
            held.enter_context(ctx.stream_slot(cookie))
        assert ctx.streams == {("user", "alice"): 2}


def test_no_limit_means_none():
    ctx = _ctx(0)
    alice = Identity(name="alice", kind="user", scopes=frozenset())
    with contextlib.ExitStack() as held:
        for _ in range(100):
            held.enter_context(ctx.stream_slot(alice))
