#!/bin/sh
# Installs the Debian tools that the boot-control backends drive (and their tests):
# grub-editenv (grub-common), fw_printenv/fw_setenv (libubootenv-tool), mkenvimage
# (u-boot-tools). Does nothing when they are present; refreshes the package lists only
# when a first install attempt fails.
set -e
missing=""
command -v grub-editenv >/dev/null 2>&1 || missing="$missing grub-common"
command -v fw_setenv >/dev/null 2>&1 || missing="$missing libubootenv-tool"
command -v mkenvimage >/dev/null 2>&1 || missing="$missing u-boot-tools"
[ -z "$missing" ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "installing$missing"
# shellcheck disable=SC2086 # the package list is meant to split
$sudo apt-get install -y -q --no-install-recommends $missing \
  || { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends $missing; }
