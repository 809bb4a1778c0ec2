#!/usr/bin/env bash
# How long `kestrel flash` takes for a real bundle, over TCP (loopback) and over the sim's serial pty, and what the
# same bytes would take on a 921 600 baud line; then a forced disconnect mid-upload (the client is SIGKILLed at
# about half way) and the resumed run.
#
#   BUNDLE=path/to/model.kbundle PUB=path/to/signing.pub bash bench/flash_link.sh
#
# The unit is `boards/sim.toml` (synthetic 256×256 camera at 30 fps, inspecting with its model during the flash)
# in a fresh state directory that trusts PUB. A pty does not pace bytes at the nominal baud rate, so the serial
# time is reported twice: as measured on the pty, and as line capacity: wire bytes × 10 bits (8N1) / 921 600.
# Environment: KESTREL / KESTREL_EDGE (release binaries, default target/release/...), OUT (target/flash-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
KESTREL=${KESTREL:-target/release/kestrel}
KESTREL_EDGE=${KESTREL_EDGE:-target/release/kestrel-edge}
BUNDLE=${BUNDLE:?set BUNDLE to a .kbundle}
PUB=${PUB:?set PUB to the public key that signed it}
OUT=${OUT:-target/flash-bench}
rm -rf "$OUT" && mkdir -p "$OUT/state/trusted"
cp "$PUB" "$OUT/state/trusted/bench.pub"

start_unit() {
  "$KESTREL_EDGE" run --board boards/sim.toml --state "$OUT/state" >"$OUT/edge.log" 2>&1 &
  EDGE_PID=$!
  for _ in $(seq 100); do grep -q "serial link on" "$OUT/edge.log" && break; sleep 0.1; done
  TCP=$(grep -o "TCP link listening on [0-9.:]*" "$OUT/edge.log" | awk '{print $NF}')
  PTY=$(grep -o "serial link on /dev/pts/[0-9]*" "$OUT/edge.log" | awk '{print $NF}')
}
start_unit
trap 'kill $EDGE_PID 2>/dev/null || true' EXIT
KEY="$OUT/state/unit.key"
SIZE=$(stat -c %s "$BUNDLE")
echo "bundle $BUNDLE: $SIZE bytes; unit tcp://$TCP, serial $PTY"

flash() { "$KESTREL" flash "$BUNDLE" --key-file "$KEY" --allow-downgrade --json "$@"; }
report() {
  python3 - "$1" "${2:-0}" 3<&0 <<'PYEOF'
import json, os, sys
r = json.loads(os.fdopen(3).readline())
label, baud = sys.argv[1], int(sys.argv[2])
line = (f"{label:<22} payload {r['payload_sent']:>9} B  wire {r['wire_sent']:>9} B  upload {r['upload_s']:7.2f} s  "
        f"activate {r['activate_s']:5.2f} s  reconnects {r['reconnects']}")
if baud:
    line += f"  | at {baud} baud 8N1: {r['wire_sent'] * 10 / baud:7.1f} s"
print(line)
PYEOF
}

flash --unit "tcp://$TCP" | tee "$OUT/tcp.json" | report "tcp loopback"
flash --unit "serial://$PTY?baud=921600" | tee "$OUT/pty.json" | report "pty (921600 nominal)" 921600

# Forced disconnect: kill the client when the unit holds about half the bundle, then flash again.
rm -f "$OUT"/state/models/incoming/*.part
"$KESTREL" flash "$BUNDLE" --unit "tcp://$TCP" --key-file "$KEY" --allow-downgrade --chunk-size 4096 --window 1 \
  >/dev/null 2>&1 &
CLIENT=$!
half=$((SIZE / 2))
for _ in $(seq 2000); do
  part=$(ls "$OUT"/state/models/incoming/*.part 2>/dev/null | head -1 || true)
  if [ -n "$part" ] && [ "$(stat -c %s "$part")" -ge "$half" ]; then break; fi
  sleep 0.002
done
kill -9 "$CLIENT" 2>/dev/null || true
held=$(stat -c %s "$part" 2>/dev/null || echo 0)
echo "client SIGKILLed with $held of $SIZE bytes on the unit"
flash --unit "tcp://$TCP" | tee "$OUT/resume.json" | report "tcp after client kill"
python3 - "$OUT/resume.json" "$SIZE" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1])); size = int(sys.argv[2])
print(f"resumed: sent {r['payload_sent']} of {size} bytes ({100 * r['payload_sent'] / size:.1f} %)")
PYEOF
