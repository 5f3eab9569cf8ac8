#!/bin/sh
# Remove the Machine Markets systemd units. Idempotent.
#
#   sudo systemd/uninstall.sh [--purge-state] [agent] [controlplane]
#
# Without components: every unit of ours that is installed. Units are stopped, disabled and
# removed, then `systemctl daemon-reload` runs. Configuration and tokens under /etc are always
# kept; --purge-state also deletes the state directories (the agent's sequence and status, the
# control plane's database!). DESTDIR=/staging/root works as for install.sh.
set -eu

root=${DESTDIR:-}
unitdir=${UNITDIR:-/etc/systemd/system}
purge=no

say() { printf '%s\n' "$*"; }
die() { printf 'uninstall.sh: %s\n' "$*" >&2; exit "${2:-1}"; }

components=
for arg in "$@"; do
    case $arg in
    --purge-state) purge=yes ;;
    agent | controlplane) components="$components $arg" ;;
    *) die "unknown argument '$arg' (expected: --purge-state, agent, controlplane)" 2 ;;
    esac
done

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (or set DESTDIR)"
fi

live_systemd=no
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    live_systemd=yes
fi

unit_of() {
    case $1 in
    agent) echo mm-agent ;;
    controlplane) echo mm-controlplane ;;
    esac
}

if [ -z "$components" ]; then
    for candidate in agent controlplane; do
        if [ -f "$root$unitdir/$(unit_of $candidate).service" ]; then
            components="$components $candidate"
        fi
    done
fi

for component in $components; do
    name=$(unit_of "$component")
    if [ "$live_systemd" = yes ]; then
        systemctl disable --now "$name.service" >/dev/null 2>&1 || true
    fi
    if [ -f "$root$unitdir/$name.service" ]; then
        rm -f "$root$unitdir/$name.service"
        say "removed   $root$unitdir/$name.service"
    else
        say "absent    $root$unitdir/$name.service"
    fi
    if [ "$purge" = yes ]; then
        rm -rf "$root/var/lib/$name" "$root/var/lib/private/$name"
        say "purged    $root/var/lib/$name"
    fi
    if [ -d "$root/etc/$name" ]; then
        say "kept      $root/etc/$name (configuration and tokens)"
    fi
done

if [ "$live_systemd" = yes ]; then
    systemctl daemon-reload
    say "ran       systemctl daemon-reload"
fi
