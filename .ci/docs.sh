#!/usr/bin/env bash
# The documentation site must build with every warning an error: a broken link or anchor, a page missing
# from mkdocs.yml's nav, or a docstring the API reference cannot parse fails CI here, before the tests.
#
#   bash .ci/docs.sh        # (make install first) builds into site/, as `make docs` does
#
# That the built pages render in a browser without console errors is tests/test_docs_site.py, which
# `make test` runs (headless Chromium from .ci/browser.sh, served on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir site
echo "docs: built site/ with --strict"
