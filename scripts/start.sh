#!/usr/bin/env bash
# Installs what layerd needs, builds it, and starts it with its default
# pool: on the system bus when one runs, else on a private bus started here.
# Prints busctl examples. Stop it with: scripts/start.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "layerd manages mounts and storage: run this as root" >&2; exit 1; }
RUN=/run/layerd-demo
mkdir -p "$RUN"

stop() {
  for f in "$RUN/layerd.pid" "$RUN/bus.pid"; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}
if [ "${1:-}" = stop ]; then stop; echo "stopped"; exit 0; fi
stop

scripts/install-deps.sh
cargo build --release --locked
BIN=$PWD/target/release/layerd

if [ -S /run/dbus/system_bus_socket ] && busctl --system status >/dev/null 2>&1; then
  install -m 0644 dbus/org.layerd.Layerd1.conf /etc/dbus-1/system.d/
  busctl --system call org.freedesktop.DBus / org.freedesktop.DBus ReloadConfig >/dev/null || true
  BUSARG=(); BUSCTL="busctl --system"
  echo "using the system bus"
else
  cat > "$RUN/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=$RUN/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow eavesdrop="true"/></policy>
</busconfig>
CONF
  rm -f "$RUN/bus.sock"
  dbus-daemon --config-file="$RUN/bus.conf" --fork --print-pid >"$RUN/bus.pid"
  ADDR="unix:path=$RUN/bus.sock"
  BUSARG=(--bus-address "$ADDR"); BUSCTL="busctl --address=$ADDR"
  echo "no system bus here: started a private one at $ADDR"
fi

"$BIN" "${BUSARG[@]}" >"$RUN/layerd.log" 2>&1 &
echo $! >"$RUN/layerd.pid"
for _ in $(seq 50); do
  timeout 2 $BUSCTL status org.layerd.Layerd1 >/dev/null 2>&1 && break
  kill -0 "$(cat "$RUN/layerd.pid")" 2>/dev/null || { cat "$RUN/layerd.log"; exit 1; }
  sleep 0.1
done
echo "layerd is running (pid $(cat "$RUN/layerd.pid"), log $RUN/layerd.log)"
cat <<EX

Try:
  $BUSCTL introspect org.layerd.Layerd1 /org/layerd/Layerd1
  $BUSCTL call org.layerd.Layerd1 /org/layerd/Layerd1 org.layerd.Layerd1.Manager Prepare ssa{ss} base/1 "" 0
  $BUSCTL call org.layerd.Layerd1 /org/layerd/Layerd1 org.layerd.Layerd1.Manager Mount s base/1
  $BUSCTL call org.layerd.Layerd1 /org/layerd/Layerd1 org.layerd.Layerd1.Manager Unmount s base/1
  $BUSCTL call org.layerd.Layerd1 /org/layerd/Layerd1 org.layerd.Layerd1.Manager Commit ssa{ss} base "base/1" 1 team web
  $BUSCTL call org.layerd.Layerd1 /org/layerd/Layerd1 org.layerd.Layerd1.Manager Prepare ssa{ss} app/1 base 0
  $BUSCTL call org.layerd.Layerd1 /org/layerd/Layerd1 org.layerd.Layerd1.Manager Walk as 1 'kind==committed'
  $BUSCTL get-property org.layerd.Layerd1 /org/layerd/Layerd1/pools/main org.layerd.Layerd1.Pool Health

containerd: the pool is also containerd's proxy snapshotter on /run/layerd/containerd-main.sock.
In /etc/containerd/config.toml (then restart containerd):
  [proxy_plugins.layerd-main]
    type = "snapshot"
    address = "/run/layerd/containerd-main.sock"
  ctr plugins ls | grep layerd-main
  ctr images pull --snapshotter layerd-main docker.io/library/busybox:latest
  ctr run --rm --snapshotter layerd-main docker.io/library/busybox:latest c1 echo hello
Stop: scripts/start.sh stop
EX
