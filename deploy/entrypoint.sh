#!/bin/sh
# Entry point of the repo2docker-service image.
#
#   (no arguments, or options)   run r2d-service as an external JupyterHub service
#   healthcheck                  exit 0 if the service's health endpoint answers 200
#   anything else                run it (e.g. `r2d-service generate-config`, `sh`)
#
# An external service needs more JupyterHub variables than a Hub-managed one gets for free; the
# ones that follow from the service's name are filled in here, so a deployment sets only
# JUPYTERHUB_API_URL, the token (JUPYTERHUB_API_TOKEN, or JUPYTERHUB_API_TOKEN_FILE naming a
# mounted secret file, which keeps it out of `docker inspect`) and, if not "repo2docker",
# JUPYTERHUB_SERVICE_NAME. R2D_REGISTRY_PASSWORD_FILE works the same way for the registry.
set -eu

name="${JUPYTERHUB_SERVICE_NAME:-repo2docker}"
base_url="${JUPYTERHUB_BASE_URL:-/}"
base_url="${base_url%/}/"
prefix="${JUPYTERHUB_SERVICE_PREFIX:-${base_url}services/${name}/}"
export JUPYTERHUB_SERVICE_NAME="$name"
export JUPYTERHUB_BASE_URL="$base_url"
export JUPYTERHUB_SERVICE_PREFIX="$prefix"
export JUPYTERHUB_CLIENT_ID="${JUPYTERHUB_CLIENT_ID:-service-${name}}"
export JUPYTERHUB_OAUTH_CALLBACK_URL="${JUPYTERHUB_OAUTH_CALLBACK_URL:-${prefix}oauth_callback}"
export JUPYTERHUB_SERVICE_URL="${JUPYTERHUB_SERVICE_URL:-http://0.0.0.0:8585}"

# read VAR from the file named by VAR_FILE (Docker and Kubernetes secrets are files)
from_file() {
    var="$1"
    eval "file=\${${var}_FILE:-}"
    [ -n "$file" ] || return 0
    if [ ! -r "$file" ]; then
        echo "r2d-entrypoint: ${var}_FILE=$file is not a readable file: mount the secret there" >&2
        exit 64
    fi
    value="$(cat "$file")"
    export "$var=$value"
}

if [ "${1:-}" = "healthcheck" ]; then
    exec python3 - <<'PY'
import os
import sys
import urllib.request
from urllib.parse import urlsplit

url = os.environ.get("R2D_HEALTHCHECK_URL")
if not url:
    listen = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
    host = listen.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):  # listening everywhere: loopback reaches it
        host = "127.0.0.1"
    url = f"http://{host}:{listen.port or 8585}{os.environ['JUPYTERHUB_SERVICE_PREFIX']}health"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as e:  # 503 (engine unreachable) and connection errors alike
    print(f"{url}: {e}", file=sys.stderr)
    sys.exit(1)
PY
fi

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

from_file JUPYTERHUB_API_TOKEN
from_file R2D_REGISTRY_PASSWORD
if [ -z "${JUPYTERHUB_API_TOKEN:-}" ]; then
    echo "r2d-entrypoint: no Hub API token: set JUPYTERHUB_API_TOKEN (or JUPYTERHUB_API_TOKEN_FILE)" \
        "to the api_token of the '$name' service in the Hub's configuration" >&2
    exit 64
fi
if [ -z "${JUPYTERHUB_API_URL:-}" ]; then
    echo "r2d-entrypoint: set JUPYTERHUB_API_URL to the Hub's API as this container reaches it," \
        "e.g. http://hub:8081/hub/api" >&2
    exit 64
fi
exec r2d-service "$@"
