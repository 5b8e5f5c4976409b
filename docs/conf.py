"""Sphinx configuration of the repo2docker-service documentation (MyST Markdown)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

from r2d_core import __version__

project = "repo2docker-service"
author = "repo2docker-service developers"
copyright = "2026, repo2docker-service developers"
version = release = __version__

extensions = ["myst_parser", "traits_reference", "openapi_reference"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
html_theme = "pydata_sphinx_theme"
html_title = "repo2docker-service"
html_static_path: list[str] = []
html_theme_options = {"navigation_with_keys": False}
