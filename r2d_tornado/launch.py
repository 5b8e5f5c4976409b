"""The UI's "Launch" button: a link to the Hub's spawn page with the chosen image as a user option.

The service never starts servers (spawners ask it for images); the button only sends the browser
to the Hub, which spawns with the image as a user option and checks it (e.g. with
:class:`r2d_core.spawner.ImageChooser`, whose ``options_from_form`` also reads query options).
"""

from __future__ import annotations

from typing import Any

from traitlets import Unicode, validate
from traitlets.config import LoggingConfigurable

__all__ = ["LaunchButton", "launch_url_template"]


class LaunchButton(LoggingConfigurable):
    """Where the images page's "Launch" button goes (no button unless ``url`` is set)."""

    url = Unicode(
        "",
        config=True,
        help="""URL template of the "Launch" button shown on every image the user may read;
        ``{image}`` becomes the URL-encoded image reference. E.g.
        ``/hub/spawn?opt-image={image}`` (JupyterHub passes ``opt-`` query arguments to the
        spawner as user options; with ``ImageChooser`` the Hub checks the image and starts it) or
        ``/hub/spawn/{user}/{image_name}?opt-image={image}`` for a named server (``{user}`` and
        ``{image_name}`` are URL-encoded too). Default empty: no button.""",
    )

    @validate("url")
    def _check_url(self, proposal: Any) -> str:
        from traitlets import TraitError

        value = proposal["value"]
        if value and "{image}" not in value:
            raise TraitError(
                "LaunchButton.url must contain {image}, e.g. /hub/spawn?opt-image={image}"
            )
        if value and not value.startswith(("/", "https://", "http://")):
            raise TraitError("LaunchButton.url must be a path ('/hub/...') or an http(s) URL")
        return value


def launch_url_template(parent: Any) -> str:
    """The configured template, from ``parent``'s config (the service's file or the Hub's)."""
    button = getattr(parent, "_r2d_launch_button", None)
    if button is None:
        button = LaunchButton(parent=parent)
        parent._r2d_launch_button = button
    return button.url
