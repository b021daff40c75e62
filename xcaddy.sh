#!/usr/bin/env bash
# Builds Caddy with sitegate's modules using xcaddy, for users who add other plugins, then checks
# that the result lists sitegate's modules. Versions are pinned; override them from the environment.
#
#   ./xcaddy.sh                                   # ./bin/caddy from this checkout
#   EXTRA_WITH="--with github.com/mholt/caddy-ratelimit@v0.1.0" ./xcaddy.sh
#
# Outside this checkout, the equivalent is:
#   xcaddy build v2.11.9 --with github.com/sitegate/sitegate@<version>
set -euo pipefail
cd "$(dirname "$0")"

CADDY_VERSION="${CADDY_VERSION:-v2.11.9}"
XCADDY_VERSION="${XCADDY_VERSION:-v0.4.7}"
OUTPUT="${OUTPUT:-./bin/caddy}"
module="$(go list -m)"

# xcaddy is built from its module source rather than with `go run xcaddy@version`: go run also asks
# the module proxy for the list of xcaddy's versions, which proxies that serve only pinned
# versions refuse.
tools="$(mktemp -d)"
trap 'rm -rf "${tools}"' EXIT
src="$(cd "${tools}" && go mod download -json "github.com/caddyserver/xcaddy@${XCADDY_VERSION}" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
cp -R "${src}" "${tools}/xcaddy-src"
chmod -R u+w "${tools}/xcaddy-src"
(cd "${tools}/xcaddy-src" && go build -o "${tools}/xcaddy" ./cmd/xcaddy)

# The zero pseudo-version names this checkout (the replacement) without asking the proxy for the
# module's published versions.
# shellcheck disable=SC2086 # EXTRA_WITH holds several arguments on purpose
"${tools}/xcaddy" build "${CADDY_VERSION}" \
	--output "${OUTPUT}" \
	--with "${module}@v0.0.0-00010101000000-000000000000=." \
	${EXTRA_WITH:-}

modules="$("${OUTPUT}" list-modules)"
for want in http.handlers.identity_emulator; do
	if ! grep -qx "${want}" <<<"${modules}"; then
		echo "xcaddy.sh: ${OUTPUT} does not list ${want}" >&2
		exit 1
	fi
done
"${OUTPUT}" version
echo "xcaddy.sh: built ${OUTPUT} with sitegate's modules"
