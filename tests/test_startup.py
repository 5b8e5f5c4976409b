"""What the service pays at start (issue 14: cold start to first answer < 1.5 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_request_schemas_do_not_load_the_iri_grammar():
    """jsonschema loads ``rfc3987_syntax`` (brought by JupyterHub's jupyter_events) when it is
    installed, which builds a grammar at import (~1 s); our schemas check no ``format``, so the
    service imports jsonschema without it, and ``import rfc3987_syntax`` still works afterwards."""
    pytest.importorskip("rfc3987_syntax")
    code = (
        "import sys, r2d_core.schema\n"
        "assert 'jsonschema' in sys.modules\n"
        "assert 'rfc3987_syntax' not in sys.modules, 'loaded'\n"
        "import rfc3987_syntax\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
