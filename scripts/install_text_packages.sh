#!/usr/bin/env bash
# Install the Debian packages that carry the real multilingual text used by the
# benchmark corpus (benchmarks/make_corpus.py, tokalign_core/data/textsources.py).
#
# Usage: sudo bash scripts/install_text_packages.sh [extra-package ...]
#        bash scripts/install_text_packages.sh --when-allowed   (what `make demo` runs)
#
# --when-allowed never fails and never prompts: it does nothing when the packages are
# already there, when TOKALIGN_TEXT_PACKAGES=0, or when it cannot install without a
# password (not root and no passwordless sudo) or without apt-get. The demo then uses the
# text the machine already has (fewer languages); the script prints why it skipped.
#
# Runs `apt-get update` once, then installs each package on its own so that one
# package missing from the mirror does not abort the rest. Prints the packages
# that failed at the end and exits 0 as long as at least one package installed
# (the corpus builder falls back to Python's own sources and docs otherwise).
set -u

PACKAGES=(
  # man pages, one package per language
  manpages-de manpages-fr manpages-ja manpages-zh manpages-ru manpages-pl
  manpages-uk manpages-es manpages-tr manpages-it manpages-pt manpages-nl
  manpages-cs manpages-ko manpages-sv manpages-fi manpages-hu manpages-ro
  # GNOME user help: many locales in one package (docbook/mallard XML)
  gnome-user-docs
  # Debian reference in several languages (HTML)
  debian-reference-en debian-reference-de debian-reference-fr debian-reference-ja
  debian-reference-zh-cn debian-reference-es debian-reference-it debian-reference-pt
  # English documentation
  python3-doc debian-handbook
)
when_allowed=0
if [ "${1:-}" = "--when-allowed" ]; then
  when_allowed=1
  shift
fi
PACKAGES+=("$@")

missing() {  # the packages dpkg does not list as installed
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || echo "$pkg"
  done
}

if [ "$when_allowed" -eq 1 ]; then
  skip() { echo "text packages: $1; the demo uses the text already on this machine" >&2; exit 0; }
  [ "${TOKALIGN_TEXT_PACKAGES:-1}" != "0" ] || skip "skipped (TOKALIGN_TEXT_PACKAGES=0)"
  command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1 \
    || skip "no apt-get here"
  todo=$(missing)
  # Installed earlier (manpages-ko is missing from some mirrors: one leftover is fine).
  [ "$(echo "$todo" | grep -c .)" -gt 1 ] || exit 0
  if [ "$(id -u)" -ne 0 ] && ! { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; then
    skip "not installed (needs root or passwordless sudo: sudo bash $0)"
  fi
  echo "text packages: installing $(echo "$todo" | grep -c .) Debian packages of real multilingual text (~2 min, once; TOKALIGN_TEXT_PACKAGES=0 skips)" >&2
  bash "$0" "$@" >&2 || skip "apt-get failed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

export DEBIAN_FRONTEND=noninteractive
# Debian images often exclude /usr/share/man and /usr/share/doc via dpkg path
# filters; the text is what we want, so lift the exclusion for these packages.
if [ -f /etc/dpkg/dpkg.cfg.d/docker ] || [ -f /etc/dpkg/dpkg.cfg.d/excludes ]; then
  echo "note: dpkg path exclusions present in /etc/dpkg/dpkg.cfg.d; man/doc files may be skipped" >&2
fi

if ! $SUDO apt-get update -qq; then
  echo "apt-get update failed: no Debian registry reachable; the corpus will fall back to Python's sources" >&2
  exit 1
fi

ok=()
failed=()
for pkg in "${PACKAGES[@]}"; do
  if $SUDO apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1; then
    ok+=("$pkg")
  else
    failed+=("$pkg")
  fi
done

echo "installed: ${ok[*]:-none}"
echo "failed: ${failed[*]:-none}"
[ "${#ok[@]}" -gt 0 ]
