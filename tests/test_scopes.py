from __future__ import annotations

import pytest

from r2d_core.errors import Forbidden, NotFound
from r2d_core.scopes import Authorizer, Grant, parse_permissions, scope_for


class FakeGroups:
    """Group membership as the Hub would answer it (the real Hub is used in the service tests)."""

    def __init__(self, groups: dict[str, set[str]]) -> None:
        self.groups = groups
        self.calls = 0

    async def members(self, group: str) -> frozenset[str]:
        self.calls += 1
        return frozenset(self.groups.get(group, set()))


def test_unfiltered_scope_means_everyone():
    p = parse_permissions(["custom:repo2docker:build"], "alice")
    assert p.grant("build") == Grant(all=True)
    assert p.grant("read").all  # build implies read
    assert not p.grant("delete").any


def test_user_filters():
    p = parse_permissions(
        ["custom:repo2docker:build!user", "custom:repo2docker:read!user=bob"], "alice"
    )
    assert p.grant("build").owners == {"alice"}
    assert p.grant("read").owners == {"alice", "bob"}
    # a service has no namespace of its own
    s = parse_permissions(["custom:repo2docker:build!user"], "svc", kind="service")
    assert not s.grant("build").any


def test_unrelated_scopes_and_filters_grant_nothing():
    p = parse_permissions(
        [
            "read:users",
            "custom:repo2docker:admin",
            "custom:repo2dockerx:read",
            "custom:repo2docker:read!server",
            "custom:repo2docker:read!service=x",
            "access:services!service=repo2docker",
        ],
        "alice",
    )
    assert all(not p.grant(a).any for a in ("read", "build", "delete"))


def test_server_filter_means_the_server_owners_namespace():
    """A single-user server's OAuth token carries '!server=OWNER/NAME' whoever logged in."""
    p = parse_permissions(["custom:repo2docker:build!server=alice/"], "admin1")
    assert p.grant("build") == Grant(owners=frozenset({"alice"}))
    assert p.grant("read").owners == {"alice"}
    named = parse_permissions(["custom:repo2docker:read!server=bob/lab"], "bob")
    assert named.grant("read").owners == {"bob"} and not named.grant("build").any


async def test_group_filter_resolves_members():
    groups = FakeGroups({"team": {"bob", "carol"}})
    auth = Authorizer(groups)
    p = parse_permissions(["custom:repo2docker:delete!group=team"], "alice")
    assert await auth.allowed(p, "delete", "bob")
    assert await auth.allowed(p, "read", "carol")
    assert not await auth.allowed(p, "delete", "alice")
    assert await auth.owners(p, "read") == {"bob", "carol"}


async def test_check_names_the_missing_scope():
    auth = Authorizer(FakeGroups({}))
    p = parse_permissions(["custom:repo2docker:read!user"], "alice")
    await auth.check(p, "read", "alice")
    with pytest.raises(Forbidden, match=scope_for("build")) as e:
        await auth.check(p, "build", "alice")
    assert e.value.details["scope"] == "custom:repo2docker:build"
    with pytest.raises(NotFound):
        await auth.check(p, "delete", "bob", hide=True)
    with pytest.raises(Forbidden):
        await auth.check(p, "delete", "bob")
