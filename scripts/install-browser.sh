#!/usr/bin/env bash
# Headless Chromium + ChromeDriver for the web page test (Debian packages).
# Best effort: without root or apt the browser test skips with a message.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
    >/dev/null 2>&1 || echo "install-browser: could not install chromium; the browser test will skip"
else
  echo "install-browser: not root or no apt-get; the browser test will skip"
fi
exit 0
