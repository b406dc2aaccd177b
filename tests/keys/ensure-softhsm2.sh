#!/bin/sh
# Installs SoftHSM2 (Debian package softhsm2) for the PKCS#11 tests when it is absent.
set -e
if command -v softhsm2-util >/dev/null 2>&1; then exit 0; fi
echo "installing softhsm2 for the PKCS#11 tests"
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get install -y softhsm2 >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y softhsm2 >/dev/null; }
