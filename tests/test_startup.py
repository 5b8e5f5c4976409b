"""What the service pays at start (issue 14: cold start to first answer < 1.5 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def assert_prints_ok(code: str) -> None:
    """Run ``code`` in a fresh interpreter (what a start imports is the point): it prints ok."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_request_schemas_do_not_load_the_iri_grammar():
    """jsonschema loads ``rfc3987_syntax`` (brought by JupyterHub's jupyter_events) when it is
    installed, which builds a grammar at import (~1 s); our schemas check no ``format``, so the
    service imports jsonschema without it, and ``import rfc3987_syntax`` still works afterwards."""
    pytest.importorskip("rfc3987_syntax")
    code = (
        "import sys, r2d_core.schema\n"
        "r2d_core.schema.validate_body('BuildRequest', {'repo': 'https://example.org/r'})\n"
        "assert 'jsonschema' in sys.modules\n"
        "assert 'rfc3987_syntax' not in sys.modules, 'loaded'\n"
        "import rfc3987_syntax\n"
        "print('ok')\n"
    )
    assert_prints_ok(code)


def test_the_service_starts_without_the_hubs_database_layer():
    """HubOAuth comes with ``jupyterhub.scopes``, which imports ``jupyterhub.orm`` (SQLAlchemy's
    ORM, alembic: ~0.2 s of CPU at every start) for functions the service never calls: the
    service imports it lazily, HubOAuth still checks scopes, and the ORM loads when used."""
    code = (
        "import sys, r2d_tornado.app\n"
        "from jupyterhub.services.auth import check_scopes\n"
        "loaded = [m for m in ('alembic', 'sqlalchemy.orm', 'mako') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "have = {'custom:repo2docker:read', 'read:users'}\n"
        "assert check_scopes({'custom:repo2docker:read'}, have)\n"
        "assert not check_scopes({'custom:repo2docker:build'}, have)\n"
        "from jupyterhub import orm\n"
        "assert orm.User.__tablename__ == 'users' and 'alembic' in sys.modules\n"
        "print('ok')\n"
    )
    assert_prints_ok(code)


def test_lazy_modules_only_defers_modules_not_loaded_yet():
    code = (
        "import sys, json\n"
        "from r2d_tornado.lazyimport import lazy_modules\n"
        "with lazy_modules('json', 'xml.dom.minidom'):\n"
        "    import json as j, xml.dom.minidom as md\n"
        "assert type(j).__name__ == 'module', type(j)\n"
        "assert type(md).__name__ == '_LazyModule', type(md)\n"
        "assert md.parseString('<a/>').documentElement.tagName == 'a'\n"
        "assert not any(type(f).__name__ == '_LazyFinder' for f in sys.meta_path)\n"
        "print('ok')\n"
    )
    assert_prints_ok(code)


def test_jsonschema_loads_at_the_first_request_with_something_to_validate():
    """~0.1 s of CPU at every start: the service's first answer is usually a listing without
    parameters, which needs no validator; the first query with parameters loads it and is still
    checked."""
    code = (
        "import sys, r2d_tornado.app\n"
        "from r2d_core.errors import InvalidRequest\n"
        "from r2d_core.schema import validate_query\n"
        "assert 'jsonschema' not in sys.modules\n"
        "assert validate_query('get /api/images', {}) == {}\n"
        "assert 'jsonschema' not in sys.modules\n"
        "try:\n"
        "    validate_query('get /api/builds', {'state': ['nonsense']})\n"
        "except InvalidRequest as e:\n"
        "    assert e.details.get('field') == 'state', e.details\n"
        "else:\n"
        "    raise AssertionError('not validated')\n"
        "assert 'jsonschema' in sys.modules\n"
        "print('ok')\n"
    )
    assert_prints_ok(code)


def test_every_request_schema_is_a_valid_schema():
    """Checked when first used now, not at import: every one of them, here."""
    from r2d_core import schema

    for name in schema.REQUEST_SCHEMAS:
        assert schema._body_validator(name) is not None
    for operation in schema.PARAMETERS:
        assert schema._query_validator(operation) is not None
