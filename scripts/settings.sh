# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this
# Sourced by the scripts that build the images, the iptables root file systems and the arm64
# VM's guest: where they cache what they build, which Debian mirrors they read, and the
# images' repository name — each overridable from the environment, the same in every script.

# Image bases, cargo's cache for image builds, the examples' venv, the VM's guest.
CACHE="${MESHINIT_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/meshinit-image}"
# Root file systems with other Debian releases' iptables (tests/iptables_versions.rs).
ROOTFS_CACHE="${MESHINIT_ROOTFS_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/meshinit-rootfs}"
MIRROR="${MESHINIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${MESHINIT_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# Another repository name keeps a developer's builds apart from CI's in a shared store.
REPO="${MESHINIT_IMAGE_REPO:-localhost/meshinit}"
