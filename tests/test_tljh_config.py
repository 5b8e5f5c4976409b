"""The TLJH plugin obeys the admin's last word: config loaded exactly the way TLJH loads it.

TLJH's ``jupyterhub_config.py`` calls the plugin hook on ``c`` and *then* loads each
``jupyterhub_config.d/*.py`` file (a fresh ``c`` each, merged afterwards). These tests run that
real load (traitlets' loader, a real ``JupyterHub`` application's ``load_config_file``) and look at
the traits the Hub would start with — no Hub process, so every case is cheap. The Hub-level
recipes (a real Hub, real requests) are in ``test_tljh_recipes.py``."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyterhub.app import JupyterHub
from traitlets import TraitError

from tests.harness.hub import _TLJH_HOOK

BUILD_OWN = "custom:repo2docker:build!user"
DELETE_OWN = "custom:repo2docker:delete!user"


@pytest.fixture
def load_tljh(tmp_path: Path) -> Iterator:
    """``load_tljh(main, **files)``: a JupyterHub app that loaded a TLJH-style config whose
    ``jupyterhub_config.d`` holds ``files`` (name -> text); ``main`` runs before the hook (what
    TLJH's own config sets)."""
    apps = []

    def load(main: str = "", admins: tuple[str, ...] = (), **files: str) -> JupyterHub:
        config_d = tmp_path / "jupyterhub_config.d"
        config_d.mkdir(exist_ok=True)
        for name, text in files.items():
            (config_d / f"{name}.py").write_text(textwrap.dedent(text))
        hook = _TLJH_HOOK.format(admins=sorted(admins), config_dir=str(tmp_path))
        (tmp_path / "jupyterhub_config.py").write_text(
            "c = get_config()  # noqa\n" + textwrap.dedent(main) + hook
        )
        JupyterHub.clear_instance()
        app = JupyterHub.instance()
        apps.append(app)
        app.load_config_file(str(tmp_path / "jupyterhub_config.py"))
        return app

    yield load
    JupyterHub.clear_instance()


def roles_of(app: JupyterHub) -> dict[str, dict]:
    names = [r["name"] for r in app.load_roles]
    assert len(names) == len(set(names)), f"a role defined twice: {names}"
    return {r["name"]: r for r in app.load_roles}


def paths_of(app: JupyterHub) -> set[str]:
    return {spec[0].split("/")[1] for spec in app.extra_handlers}


def test_defaults_without_any_admin_file(load_tljh):
    app = load_tljh(admins=("root",))
    roles = roles_of(app)
    assert roles["repo2docker-admin"]["users"] == ["root"]
    assert "user" not in roles  # JupyterHub's own user role, extended through extra_user_scopes
    assert {BUILD_OWN, DELETE_OWN} <= set(app.extra_user_scopes)
    assert set(app.custom_scopes) >= {"custom:repo2docker:read", "custom:repo2docker:build"}
    assert paths_of(app) == {"repo2docker"}


def test_path_set_after_the_hook_moves_the_handlers(load_tljh):
    app = load_tljh(**{"repo2docker": "c.R2DPlugin.path = 'images'\n"})
    assert paths_of(app) == {"images"}  # moved, not added next to the default


def test_default_roles_off_after_the_hook_grants_nothing(load_tljh):
    app = load_tljh(admins=("root",), **{"repo2docker": "c.R2DPlugin.add_default_roles = False"})
    assert "repo2docker-admin" not in roles_of(app)
    assert not any(s.startswith("custom:repo2docker") for s in app.extra_user_scopes)
    for role in app.load_roles:
        assert not any(s.startswith("custom:repo2docker") for s in role.get("scopes", [])), role
    # the scopes stay defined, so the admin's own roles may use them
    assert "custom:repo2docker:read" in app.custom_scopes


def test_admin_user_role_appended_is_extended_not_duplicated(load_tljh):
    app = load_tljh(
        **{
            "users": """
            c.JupyterHub.load_roles.append(
                {"name": "user", "scopes": ["self", "access:servers!user"]}
            )
            """
        }
    )
    user = roles_of(app)["user"]
    assert user["scopes"] == ["self", "access:servers!user", BUILD_OWN, DELETE_OWN]


def test_roles_assigned_in_a_file_keep_the_plugin_roles(load_tljh):
    """``c.JupyterHub.load_roles = [...]`` in jupyterhub_config.d replaces TLJH's list so far,
    but the plugin's admin role and user grants are added at Hub start all the same."""
    app = load_tljh(
        admins=("root",),
        **{
            "roles": """
            c.JupyterHub.load_roles = [
                {"name": "viewers", "groups": ["viewers"], "scopes": ["custom:repo2docker:read"]},
            ]
            """
        },
    )
    roles = roles_of(app)
    assert set(roles) == {"viewers", "repo2docker-admin"}
    assert {BUILD_OWN, DELETE_OWN} <= set(app.extra_user_scopes)


def test_admins_added_in_a_file_get_the_admin_role(load_tljh):
    app = load_tljh(admins=("root",), **{"more-admins": "c.Authenticator.admin_users.add('ops')"})
    assert roles_of(app)["repo2docker-admin"]["users"] == ["ops", "root"]


def test_admin_defined_roles_of_the_plugins_names_replace_the_defaults(load_tljh):
    app = load_tljh(
        **{
            "roles": """
            c.JupyterHub.load_roles.extend([
                {"name": "repo2docker-admin", "groups": ["ops"],
                 "scopes": ["custom:repo2docker:build"]},
                {"name": "repo2docker-user", "groups": ["students"],
                 "scopes": ["custom:repo2docker:build!user"]},
            ])
            """
        }
    )
    roles = roles_of(app)
    assert roles["repo2docker-admin"] == {
        "name": "repo2docker-admin",
        "groups": ["ops"],
        "scopes": ["custom:repo2docker:build"],
    }
    assert BUILD_OWN not in app.extra_user_scopes  # everyone's default grant is replaced


def test_custom_scopes_assigned_in_a_file_keep_the_plugins(load_tljh):
    app = load_tljh(
        **{"scopes": "c.JupyterHub.custom_scopes = {'custom:other:x': {'description': 'x'}}"}
    )
    assert {"custom:other:x", "custom:repo2docker:build"} <= set(app.custom_scopes)


def test_the_last_file_wins(load_tljh):
    app = load_tljh(
        **{
            "a-first": "c.R2DPlugin.path = 'first'\nc.R2DPlugin.add_default_roles = False",
            "b-second": "c.R2DPlugin.path = 'second'\nc.R2DPlugin.add_default_roles = True",
        }
    )
    assert paths_of(app) == {"second"}
    assert "repo2docker-admin" in roles_of(app)


def test_settings_before_the_hook_still_apply(load_tljh):
    app = load_tljh(main="c.R2DPlugin.path = 'early'\n")
    assert paths_of(app) == {"early"}


@pytest.mark.parametrize("path", ["", "api", "admin/x", "a b", "../x", "login"])
def test_bad_paths_are_refused_with_the_fix(load_tljh, capfd, path):
    """The Hub refuses to start and says what to set (not a Hub without the plugin's pages)."""
    with pytest.raises(SystemExit):
        load_tljh(**{"repo2docker": f"c.R2DPlugin.path = {path!r}"})
    err = capfd.readouterr().err
    assert "R2DPlugin.path" in err and "e.g. 'repo2docker'" in err


def test_path_validation_keeps_good_paths():
    from r2d_tljh.settings import R2DPlugin

    assert R2DPlugin(path="/tools/images/").path == "tools/images"
    with pytest.raises(TraitError):
        R2DPlugin(path="tools/../api")


def test_planning_is_idempotent():
    from r2d_tljh.settings import plan_hub_config

    args = {
        "add_default_roles": True,
        "custom_scopes": {},
        "admin_users": {"root"},
    }
    for extra in (set(), None):
        first = plan_hub_config(
            load_roles=[{"name": "user", "scopes": ["self"]}], extra_user_scopes=extra, **args
        )
        again = plan_hub_config(
            load_roles=first.load_roles, extra_user_scopes=first.extra_user_scopes, **args
        )
        assert again == first


def test_roles_appended_before_the_hook(load_tljh):
    """``.append`` without an assignment leaves a lazy value, not a list, when the hook runs
    (the old hook iterated it: TypeError)."""
    app = load_tljh(main='c.JupyterHub.load_roles.append({"name": "user", "scopes": ["self"]})\n')
    assert roles_of(app)["user"]["scopes"] == ["self", BUILD_OWN, DELETE_OWN]


def test_lazy_values_without_a_hub():
    from traitlets.config import Config

    from r2d_tljh.plugin import configure

    c = Config()
    c.JupyterHub.load_roles.append({"name": "user", "scopes": ["self"]})
    c.JupyterHub.extra_handlers.append((r"/mine", object, {}))
    c.Authenticator.admin_users.add("ops")
    configure(c)
    assert {r["name"]: r for r in c.JupyterHub.load_roles}["repo2docker-admin"]["users"] == ["ops"]
    assert c.JupyterHub.load_roles[0]["scopes"] == ["self", BUILD_OWN, DELETE_OWN]
    assert c.JupyterHub.extra_handlers[0] == (r"/mine", object, {})  # the admin's handler stays


def test_other_extra_handlers_stay(load_tljh):
    from jupyterhub.handlers import BaseHandler

    app = load_tljh(
        **{
            "mine": """
            from jupyterhub.handlers import BaseHandler
            c.JupyterHub.extra_handlers = [(r"/mine", BaseHandler)]
            c.R2DPlugin.path = "moved"
            """
        }
    )
    assert (r"/mine", BaseHandler) in app.extra_handlers
    assert paths_of(app) == {"mine", "moved"}


def test_hook_called_twice_registers_once(load_tljh):
    app = load_tljh(
        main="",
        **{"again": "c.R2DPlugin.path = 'twice'"},
    )
    from r2d_tljh.plugin import configure

    configure(app.config, app)  # as if a second plugin manager called the hook again
    app.update_config(app.config)
    assert paths_of(app) == {"twice"}
    assert len(app.extra_handlers) == len({spec[0] for spec in app.extra_handlers})


def test_jupyterhub_without_extra_user_scopes_gets_a_user_role():
    from r2d_tljh.settings import plan_hub_config

    plan = plan_hub_config(
        add_default_roles=True,
        load_roles=[],
        custom_scopes={},
        extra_user_scopes=None,
        admin_users=set(),
    )
    assert {"name": "user", "scopes": ["self", BUILD_OWN, DELETE_OWN]} in plan.load_roles
