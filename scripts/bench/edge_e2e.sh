#!/usr/bin/env bash
# End-to-end evidence for the edge issue, rerunnable: kestrel-edge on boards/sim.toml with a fitted 256×256 model,
# watched by `kestrel monitor` over TCP and over the sim's pseudo-terminal serial link.
#
# Measures (release builds):
#   1. frames/s and capture→verdict latency p50/p99 at 256×256 (from the verdicts' own t_capture_us / latency_us)
#   2. masks/s over TCP (every verdict carries its mask: --masks-every 1)
#   3. verdicts/s over the pty serial link, and bytes per verdict on that link. A pty does not rate-limit (its
#      baud is nominal), so the line-rate ceiling at 921600 baud 8N1 (92160 bytes/s) is computed from the measured
#      bytes/verdict: ceiling = 92160 / bytes_per_verdict.
#   4. zero lost verdicts across a forced disconnect: the monitor runs through a TCP proxy that resets every
#      connection once mid-stream; the journal seqs shown must be contiguous with no duplicates.
# The sim camera is paced at the profile's fps (sim.toml: 30 fps), so run 1 also repeats with an unpaced copy of the
# profile (same file with fps raised) to see the inference ceiling.
#
# Usage: scripts/bench/edge_e2e.sh [WORK_DIR]   (default target/bench-e2e; model and data are reused if present)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${1:-$ROOT/target/bench-e2e}
N=${N:-200}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
mkdir -p "$WORK"

cargo build --release -p kestrel-edge -p kestrel-host >&2
KESTREL=$BIN/kestrel
EDGE=$BIN/kestrel-edge

# --- model: synthetic product from `kestrel demo`, then a 256×256 resnet18_narrow PaDiM fit -----------------------
if [ ! -f "$WORK/model/model.toml" ]; then
  [ -d "$WORK/demo/data" ] || "$KESTREL" demo --out "$WORK/demo" >"$WORK/demo.log"
  "$KESTREL" fit --data "$WORK/demo/data" --category widget --arch resnet18_narrow --image-size 256 \
    -o "$WORK/model" >"$WORK/fit.log"
fi

EDGE_PID=
PROXY_PID=
cleanup() {
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
  [ -n "$EDGE_PID" ] && kill -TERM "$EDGE_PID" 2>/dev/null && wait "$EDGE_PID" 2>/dev/null || true
}
trap cleanup EXIT

# start_edge PROFILE: starts the unit, sets TCP and PTY from its stderr.
start_edge() {
  rm -rf "$WORK/state"
  "$EDGE" run --board "$1" --state "$WORK/state" --model "$WORK/model" 2>"$WORK/edge.log" &
  EDGE_PID=$!
  for _ in $(seq 100); do
    TCP=$(sed -n 's/.*TCP link listening on \([0-9.:]*\).*/\1/p' "$WORK/edge.log" | head -1)
    PTY=$(sed -n 's/.*serial link on \(\/[^ ]*\).*/\1/p' "$WORK/edge.log" | head -1)
    [ -n "$TCP" ] && [ -n "$PTY" ] && return 0
    sleep 0.1
  done
  echo "kestrel-edge did not start; see $WORK/edge.log" >&2
  cat "$WORK/edge.log" >&2
  exit 1
}
stop_edge() { kill -TERM "$EDGE_PID"; wait "$EDGE_PID" || true; EDGE_PID=; }

# summarize FILE LABEL: frames/s, latency p50/p99, masks/s from a --json stream.
summarize() {
  python3 - "$1" "$2" <<'PY'
import json, sys
path, label = sys.argv[1], sys.argv[2]
v = [json.loads(l) for l in open(path)]
v = [x for x in v if x["type"] == "verdict"]
seqs = [x["seq"] for x in v]
t = sorted(x["t_capture_us"] for x in v)
span = (t[-1] - t[0]) / 1e6
lat = sorted(x["latency_us"] for x in v)
pct = lambda p: lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] / 1000
masks = sum(1 for x in v if x["mask"] is not None)
print(f"{label}: {len(v)} verdicts, seqs {min(seqs)}..{max(seqs)}, "
      f"{(len(v) - 1) / span:.1f} frames/s, latency p50 {pct(50):.1f} ms p99 {pct(99):.1f} ms, "
      f"{(masks - 1) / span if masks > 1 else 0:.1f} masks/s ({masks} masks), "
      f"{sum(1 for x in v if not x['pass'])} rejects")
PY
}

bytes_per_verdict() { # STDERR_FILE: from the monitor's summary line
  python3 - "$1" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
m = re.search(r"(\d+) verdicts shown.* (\d+) bytes received", s)
n, b = int(m.group(1)), int(m.group(2))
print(f"{b / n:.1f} bytes/verdict on the link ({b} bytes for {n} verdicts, handshake and stats included); "
      f"921600 baud 8N1 ceiling: {92160 / (b / n):.0f} verdicts/s")
PY
}

echo "# $(date -u +%FT%TZ) $(uname -m), $(nproc) cores; N=$N verdicts per run"

# --- 1-3: boards/sim.toml as shipped (256×256 synthetic camera at its configured fps) ----------------------------
start_edge boards/sim.toml
KEY=$WORK/state/unit.key
"$KESTREL" monitor --unit "tcp://$TCP" --key-file "$KEY" --json --count "$N" >"$WORK/tcp.jsonl" 2>"$WORK/tcp.err"
summarize "$WORK/tcp.jsonl" "TCP, sim.toml"
bytes_per_verdict "$WORK/tcp.err"
"$KESTREL" monitor --unit "tcp://$TCP" --key-file "$KEY" --json --count "$N" --masks-every 1 \
  >"$WORK/masks.jsonl" 2>"$WORK/masks.err"
summarize "$WORK/masks.jsonl" "TCP with masks, sim.toml"
bytes_per_verdict "$WORK/masks.err"
"$KESTREL" monitor --unit "serial://$PTY?baud=921600" --key-file "$KEY" --json --count "$N" \
  >"$WORK/serial.jsonl" 2>"$WORK/serial.err"
summarize "$WORK/serial.jsonl" "serial pty (nominal 921600 baud), sim.toml"
bytes_per_verdict "$WORK/serial.err"

# --- 4: forced disconnect through a resetting proxy ----------------------------------------------------------------
PROXY_PORT_FILE=$WORK/proxy.port
rm -f "$PROXY_PORT_FILE"
python3 - "$TCP" "$PROXY_PORT_FILE" <<'PY' &
# Forwards to the unit; 3 s after the first connection it resets every connection once, keeps the link down for
# 1 s (connections are accepted but not forwarded until then, like a switch rebooting), then forwards again.
import socket, sys, threading, time
host, port = sys.argv[1].rsplit(":", 1)
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind(("127.0.0.1", 0)); ls.listen()
open(sys.argv[2], "w").write(str(ls.getsockname()[1]))
conns, cut_done = [], [False]
def pump(a, b):
    try:
        while (d := a.recv(65536)):
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
up_at = [0.0]
def cutter():
    time.sleep(3)
    up_at[0] = time.time() + 1.0
    for c in list(conns):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
    print("proxy: reset all connections", file=sys.stderr)
while True:
    c, _ = ls.accept()
    time.sleep(max(0.0, up_at[0] - time.time()))
    u = socket.create_connection((host, int(port)))
    conns.append(c)
    if not cut_done[0]:
        cut_done[0] = True
        threading.Thread(target=cutter, daemon=True).start()
    threading.Thread(target=pump, args=(c, u), daemon=True).start()
    threading.Thread(target=pump, args=(u, c), daemon=True).start()
PY
PROXY_PID=$!
for _ in $(seq 50); do [ -s "$PROXY_PORT_FILE" ] && break; sleep 0.1; done
PROXY_PORT=$(cat "$PROXY_PORT_FILE")
# 6 s of verdicts at the sim's rate: the reset lands in the middle.
COUNT=$(python3 -c "print(int(6 * $(sed -n 's/^fps = //p' boards/sim.toml)))")
"$KESTREL" monitor --unit "tcp://127.0.0.1:$PROXY_PORT" --key-file "$KEY" --json --count "$COUNT" \
  >"$WORK/drop.jsonl" 2>"$WORK/drop.err"
kill "$PROXY_PID" 2>/dev/null || true
PROXY_PID=
python3 - "$WORK/drop.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
seqs = [x["seq"] for x in lines if x["type"] == "verdict"]
replayed = sum(1 for x in lines if x["type"] == "verdict" and x["replayed"])
downs = sum(1 for x in lines if x["type"] == "link_down")
lost = sum(x["count"] for x in lines if x["type"] == "lost")
dups = len(seqs) - len(set(seqs))
missing = (max(seqs) - min(seqs) + 1) - len(set(seqs))
print(f"forced disconnect: {downs} link drop(s), {len(seqs)} verdicts seqs {min(seqs)}..{max(seqs)}, "
      f"{replayed} replayed from the journal, {missing} missing, {dups} duplicates, {lost} reported lost")
sys.exit(0 if downs >= 1 and missing == 0 and dups == 0 and lost == 0 else 1)
PY
stop_edge

# --- 1 again, unpaced: the same profile with the camera rate raised, to see the inference ceiling ----------------
sed 's/^fps = .*/fps = 1000.0/; s#^state_dir = .*#state_dir = "'"$WORK"'/state"#' boards/sim.toml >"$WORK/sim-fast.toml"
start_edge "$WORK/sim-fast.toml"
"$KESTREL" monitor --unit "tcp://$TCP" --key-file "$WORK/state/unit.key" --json --count "$N" \
  >"$WORK/fast.jsonl" 2>"$WORK/fast.err"
summarize "$WORK/fast.jsonl" "TCP, sim.toml with fps = 1000 (inference-bound)"
"$KESTREL" monitor --unit "tcp://$TCP" --key-file "$WORK/state/unit.key" --json --count "$N" --masks-every 1 \
  >"$WORK/fast-masks.jsonl" 2>"$WORK/fast-masks.err"
summarize "$WORK/fast-masks.jsonl" "TCP with masks, fps = 1000"
"$KESTREL" monitor --unit "serial://$PTY?baud=921600" --key-file "$WORK/state/unit.key" --json --count "$N" \
  >"$WORK/fast-serial.jsonl" 2>"$WORK/fast-serial.err"
summarize "$WORK/fast-serial.jsonl" "serial pty, fps = 1000"
bytes_per_verdict "$WORK/fast-serial.err"
grep -h "frames\|dropped" "$WORK/edge.log" | tail -2 || true
stop_edge
