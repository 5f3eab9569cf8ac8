#!/bin/sh
# Install the Machine Markets systemd units. Idempotent; enables and starts nothing.
#
#   sudo systemd/install.sh [agent] [controlplane]
#
# Without arguments: the agent unit, plus the control-plane unit when it ships beside this script.
# Creates /etc/mm-agent (and /etc/mm-controlplane), installs the units and runs
# `systemctl daemon-reload`. An existing configuration or token is never overwritten or changed.
# DESTDIR=/staging/root installs under another root (packaging, tests) and skips systemctl.
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
root=${DESTDIR:-}
unitdir=${UNITDIR:-/etc/systemd/system}

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit "${2:-1}"; }

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (or set DESTDIR to install under a staging root)"
fi

components=$*
if [ -z "$components" ]; then
    components=agent
    if [ -f "$here/mm-controlplane.service" ]; then
        components="$components controlplane"
    fi
fi

ensure_dir() { # PATH MODE: create when missing; an existing directory is left as it is
    if [ ! -d "$1" ]; then
        install -d -m "$2" "$1"
        say "created   $1"
    fi
}

install_unit() { # NAME
    src=$here/$1
    dst=$root$unitdir/$1
    [ -f "$src" ] || die "$src not found"
    ensure_dir "$root$unitdir" 0755
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        say "unchanged $dst"
    else
        install -m 0644 "$src" "$dst"
        say "installed $dst"
    fi
}

check_secret() { # PATH: the agent refuses a token that group or others can read
    if [ -e "$1" ]; then
        mode=$(stat -c %a "$1")
        if [ $((0$mode & 077)) -ne 0 ]; then
            say "WARNING   $1 has mode $mode; mm-agent will refuse it: chmod 600 $1"
        else
            say "kept      $1"
        fi
        return 0
    fi
    return 1
}

for component in $components; do
    case $component in
    agent)
        install_unit mm-agent.service
        ensure_dir "$root/etc/mm-agent" 0755
        # The example is documentation and is refreshed; agent.toml itself is never touched.
        install -m 0644 "$here/agent.toml.example" "$root/etc/mm-agent/agent.toml.example"
        if [ -e "$root/etc/mm-agent/agent.toml" ]; then
            say "kept      $root/etc/mm-agent/agent.toml"
        else
            say "TODO      write /etc/mm-agent/agent.toml (start from agent.toml.example beside it)"
        fi
        if ! check_secret "$root/etc/mm-agent/agent-token"; then
            say "TODO      put the token printed by 'mmctl agents enroll' in /etc/mm-agent/agent-token (mode 0600)"
        fi
        if [ ! -x "$root/usr/local/bin/mm-agent" ]; then
            say "TODO      install the mm-agent program as /usr/local/bin/mm-agent (docs/agent.md)"
        fi
        ;;
    controlplane)
        install_unit mm-controlplane.service
        ensure_dir "$root/etc/mm-controlplane" 0750
        ;;
    *)
        die "unknown component '$component' (expected: agent, controlplane)" 2
        ;;
    esac
done

if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    say "ran       systemctl daemon-reload"
else
    say "skipped   systemctl daemon-reload (DESTDIR set or systemd not running)"
fi
say "nothing was enabled; when ready: systemctl enable --now mm-agent"
