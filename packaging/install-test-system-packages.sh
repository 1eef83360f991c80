#!/bin/sh
# System packages the tests need: fonts and the libraries Qt's offscreen platform loads. And for
# the Linux bundle: the compiler and binutils that build its small ICU data library; the X11 and
# Wayland client libraries Qt's xcb and wayland plugins link, which PyInstaller copies into the
# app (many desktops lack libxcb-cursor0 and friends, and without them Qt cannot open a window);
# Xvfb, on which the build opens the frozen app's window.
# Only Debian/Ubuntu (apt) is handled; elsewhere this says what to install and goes on.
set -eu
PACKAGES="fonts-dejavu-core libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0 gcc binutils
 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-randr0
 libxcb-xkb1 libxkbcommon-x11-0 libwayland-client0 libwayland-cursor0 libwayland-egl1 xvfb xauth"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "Not a Debian-like system: make sure these (or their equivalents) are installed: $PACKAGES"
    exit 0
fi
missing=""
for package in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "Installing system packages:$missing"
$SUDO apt-get update -qq
# Package names drift between releases (e.g. t64 renames): warn rather than stop the tests.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing \
    || echo "warning: could not install some of:$missing (Qt tests may fail without them)"
