#!/bin/sh
# The stand-in's entrypoint: the official image builds Redis with protected mode off
# (its network is the container's), Debian's has it on and would refuse the app's
# connections from another container. Anything else runs as given.
set -e
if [ "${1:-}" = "redis-server" ]; then
    shift
    set -- redis-server --protected-mode no "$@"
fi
exec "$@"
