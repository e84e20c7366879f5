#!/usr/bin/env bash
# Prints the bin directory of a virtual environment holding exactly PACKAGE==VERSION, creating
# it on first use under ${PALISADE_CACHE:-~/.cache/palisade}/venv/, keyed by package, version and
# Python version (a venv is tied to its absolute path and its Python, so it lives outside the
# checkout and is rebuilt when either changes or it no longer runs).
# Usage: scripts/pytool.sh PACKAGE VERSION
set -euo pipefail
pkg="${1:?usage: pytool.sh PACKAGE VERSION}"
version="${2:?usage: pytool.sh PACKAGE VERSION}"
py="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
dir="${PALISADE_CACHE:-${HOME}/.cache/palisade}/venv/${pkg}-${version}-py${py}"
if ! "$dir/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$pkg') != '$version')" 2>/dev/null; then
  rm -rf "$dir"
  python3 -m venv "$dir" >&2
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$pkg==$version" >&2
fi
echo "$dir/bin"
