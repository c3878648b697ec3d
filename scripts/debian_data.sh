#!/usr/bin/env bash
# Installs the Debian packages the offline scenarios read, and nothing else.
# Each task family lists its own in tasks/<family>/debian-packages.txt, an example task plugin
# in examples/<name>/debian-packages.txt (one name per line, '#' starts a comment); a package
# already installed is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
wanted=$(cat tasks/*/debian-packages.txt examples/*/debian-packages.txt 2>/dev/null | sed 's/#.*//' | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
missing=()
for pkg in $wanted; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
echo "installing Debian data packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
