#!/usr/bin/env bash
# Fetch MathJax 3 from the npm registry and keep only what the book's pages load, so the rendered
# book typesets maths with no network. Idempotent: does nothing when the files are already there.
#
#   tools/fetch_mathjax.sh [DEST]      (DEST defaults to _vendor/mathjax at the repository root)
#
# The book's _config.yml copies _vendor/ into _build/html/ (html_extra_path) and points Sphinx's
# mathjax_path at mathjax/tex-chtml.js. _vendor/ is git-ignored: these files are fetched, never
# committed. MathJax is Apache-2.0; its LICENSE is kept next to the files.
set -euo pipefail

MATHJAX_VERSION="${MATHJAX_VERSION:-3.2.2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/_vendor/mathjax}"
STAMP="$DEST/.mathjax-$MATHJAX_VERSION"

# What the CHTML output loads: the combined TeX-input/CHTML-output component, its web fonts, the
# TeX extensions that \require and autoload fetch lazily, and the components the contextual menu
# loads lazily (accessibility explorer, speech rule engine and its maps).
PARTS=(
  tex-chtml.js
  output/chtml/fonts
  input/tex/extensions
  a11y
  ui
  sre
)

if [ -f "$STAMP" ] && [ -f "$DEST/tex-chtml.js" ] && [ -d "$DEST/output/chtml/fonts/woff-v2" ]; then
  echo "MathJax $MATHJAX_VERSION already in $DEST"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm is needed to fetch MathJax $MATHJAX_VERSION for offline maths rendering." >&2
  echo "       Install Node.js and npm (Debian/Ubuntu: apt-get install npm), then run $0 again." >&2
  exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "Fetching mathjax@$MATHJAX_VERSION from the npm registry"
if ! (cd "$TMP" && npm pack --silent "mathjax@$MATHJAX_VERSION" >/dev/null); then
  echo "error: npm could not fetch mathjax@$MATHJAX_VERSION from the npm registry (see above);" >&2
  echo "       check the network or npm's registry setting (npm config get registry)." >&2
  exit 1
fi
tarball="$(ls "$TMP"/mathjax-*.tgz)"
tar -xzf "$tarball" -C "$TMP"
src="$TMP/package/es5"
for part in "${PARTS[@]}"; do
  if [ ! -e "$src/$part" ]; then
    echo "error: mathjax@$MATHJAX_VERSION has no es5/$part" >&2
    exit 1
  fi
done

# Assemble next to DEST and move into place at the end, so an interrupted run leaves no half copy.
mkdir -p "$(dirname "$DEST")"
NEW="$(mktemp -d "$(dirname "$DEST")/.mathjax.XXXXXX")"
for part in "${PARTS[@]}"; do
  mkdir -p "$NEW/$(dirname "$part")"
  cp -R "$src/$part" "$NEW/$part"
done
cp "$TMP/package/LICENSE" "$NEW/LICENSE"
touch "$NEW/.mathjax-$MATHJAX_VERSION"
rm -rf "$DEST"
mv "$NEW" "$DEST"
chmod 755 "$DEST"
echo "MathJax $MATHJAX_VERSION installed in $DEST ($(du -sh "$DEST" | cut -f1))"
