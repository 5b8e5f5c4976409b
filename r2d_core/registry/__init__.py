"""OCI distribution (Docker registry v2) client: list, inspect and delete images in a registry.

The API calls are httpx (async), not oras-py: see :mod:`r2d_core.registry.client` for why.
"""

from __future__ import annotations

from .auth import RegistryAuth, RegistryAuthError
from .client import RegistryClient
from .config import Registry
from .dockerconfig import credentials_from_docker_config
from .models import Descriptor, ImageConfig, Manifest, RegistryImage

__all__ = [
    "Descriptor",
    "ImageConfig",
    "Manifest",
    "Registry",
    "RegistryAuth",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryImage",
    "credentials_from_docker_config",
]
