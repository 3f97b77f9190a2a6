#!/usr/bin/env bash
# Installs layerd for systemd: the binary, the service unit, the D-Bus
# policy and activation file, and the default config (only if absent).
#
#   scripts/install.sh                      # into /usr/local and /etc, then reloads
#   DESTDIR=/tmp/stage PREFIX=/usr scripts/install.sh   # a staging tree (packages)
#
# PREFIX (default /usr/local): bin/layerd, lib/systemd/system/layerd.service,
#   share/dbus-1/system-services/org.layerd.Layerd1.service
# SYSCONFDIR (default /etc): dbus-1/system.d/org.layerd.Layerd1.conf,
#   layerd/layerd.toml
# LAYERD_BIN: the binary to install (default: cargo build --release).
# With DESTDIR empty and systemd running, reloads systemd and dbus so the
# unit and the activation file are live; enabling stays the admin's call.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
DESTDIR=${DESTDIR:-}
BINDIR=$PREFIX/bin
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
DBUS_SERVICES=$PREFIX/share/dbus-1/system-services

bin=${LAYERD_BIN:-}
if [ -z "$bin" ]; then
  cargo build --locked --release --bin layerd
  bin=${CARGO_TARGET_DIR:-target}/release/layerd
fi
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable" >&2; exit 1; }

install -D -m 0755 "$bin" "$DESTDIR$BINDIR/layerd"
install -d "$DESTDIR$UNITDIR" "$DESTDIR$DBUS_SERVICES" \
  "$DESTDIR$SYSCONFDIR/dbus-1/system.d" "$DESTDIR$SYSCONFDIR/layerd"
sed "s|/usr/local/bin/layerd|$BINDIR/layerd|g" systemd/layerd.service \
  > "$DESTDIR$UNITDIR/layerd.service"
sed "s|/usr/local/bin/layerd|$BINDIR/layerd|g" dbus/org.layerd.Layerd1.service \
  > "$DESTDIR$DBUS_SERVICES/org.layerd.Layerd1.service"
install -m 0644 dbus/org.layerd.Layerd1.conf "$DESTDIR$SYSCONFDIR/dbus-1/system.d/"
chmod 0644 "$DESTDIR$UNITDIR/layerd.service" "$DESTDIR$DBUS_SERVICES/org.layerd.Layerd1.service"
# The admin's config is never overwritten.
if [ ! -e "$DESTDIR$SYSCONFDIR/layerd/layerd.toml" ]; then
  install -m 0644 config/layerd.toml "$DESTDIR$SYSCONFDIR/layerd/layerd.toml"
fi
echo "installed layerd into ${DESTDIR:-/} (prefix $PREFIX)"

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  # dbus-daemon re-reads its policy and activation files.
  systemctl reload dbus.service 2>/dev/null || busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig || true
  echo "start it now and at boot: systemctl enable --now layerd"
  echo "or let the first D-Bus call start it: busctl --system introspect org.layerd.Layerd1 /org/layerd/Layerd1"
fi
