#!/usr/bin/env bash
# Install every system part the tests and the demo need, idempotently, on Debian 12 as root.
# Nothing here is pulled from a container registry: all parts are Debian/npm packages.
set -euo pipefail

need_apt=()
for pkg in docker.io docker-registry debootstrap apache2-utils chromium busybox-static git; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-system: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The debian docker.io package does not start a daemon we use (we start a private one), but its
# service may have been started by the package's postinst: leave it alone, we never use its socket.

# repo2docker needs the buildx plugin; bookworm has none, trixie's .deb works on bookworm's libc.
if [ ! -x /usr/libexec/docker/cli-plugins/docker-buildx ]; then
  echo "install-system: docker-buildx from trixie"
  scratch=$(mktemp -d)
  mkdir -p "$scratch/lists/partial" "$scratch/cache/archives/partial" "$scratch/etc"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$scratch/etc/sources.list"
  opts=(-o "Dir::Etc::SourceList=$scratch/etc/sources.list" -o "Dir::Etc::SourceParts=-"
        -o "Dir::State::Lists=$scratch/lists" -o "Dir::Cache=$scratch/cache")
  apt-get "${opts[@]}" update -qq
  (cd "$scratch" && apt-get "${opts[@]}" download docker-buildx >/dev/null)
  dpkg -i --force-depends "$scratch"/docker-buildx_*.deb >/dev/null
  rm -rf "$scratch"
fi

# npm builds the UI bundle (r2d_tornado/frontend, via hatch_build.py) when the package is installed.
if ! command -v npm >/dev/null 2>&1; then
  echo "install-system: apt-get install nodejs npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

if ! command -v configurable-http-proxy >/dev/null 2>&1; then
  echo "install-system: configurable-http-proxy from npm"
  npm install -g --silent configurable-http-proxy@5 >/dev/null
fi
echo "install-system: ok"
