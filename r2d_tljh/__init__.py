"""repo2docker-service as a TLJH plugin: the same core and handlers, inside the Hub process."""

from __future__ import annotations

from .plugin import configure, tljh_custom_jupyterhub_config, tljh_extra_hub_pip_packages

__all__ = ["configure", "tljh_custom_jupyterhub_config", "tljh_extra_hub_pip_packages"]
