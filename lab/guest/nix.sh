#!/bin/sh
# Stand-in for the Nix the bake installs: the bootstrap only asks its version.
if [ "${1:-}" = --version ]; then
    echo "nix (Nix) 2.28.3"
    exit 0
fi
echo "nix stand-in: only --version" >&2
exit 1
