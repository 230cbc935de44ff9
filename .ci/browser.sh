# Source this file: make sure Debian's chromium is there for tests/test_ui_browser.py.
#
#   source .ci/browser.sh
#
# Installed with apt-get when missing and we are root (as .ci/services.sh installs PostgreSQL); elsewhere
# the test is skipped and says why. Playwright drives this chromium: no browser is ever downloaded.

_ablate_browser() {
  if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "browser: installing chromium from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } || true
  fi
  command -v chromium >/dev/null ||
    echo "browser: no chromium; tests/test_ui_browser.py will be skipped" >&2
  return 0
}

_ablate_browser
