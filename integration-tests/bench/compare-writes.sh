#!/usr/bin/env bash
# Replicated writes, Gatekeeper vs etcd 3.4, side by side in one run, mutual TLS on both.
#
# Starts a 3-member etcd (Debian's etcd-server) and a 3-node Gatekeeper cluster (release binary)
# on loopback, data on the same disk, default fsync for both, every listener TLS with client
# certificates from one CA (made by `gatekeeper certs dev-cluster`). One load generator drives
# etcd's KV/Put and Gatekeeper's AdminService/WriteCanary (the same request layout: key = 1,
# value = 2) to each leader, with the same keys, 256-byte values and client counts, alternating
# systems round by round. Prints one JSON line per measurement, then a table of medians and
# ratios (Gatekeeper / etcd).
#
#   cargo build --release -p gatekeeper
#   integration-tests/bench/compare-writes.sh       # ROUNDS=3 CLIENTS="1 16 64 256"
#
# The load generator is the team's shared putload.py (PUTLOAD, default ../shared/bench/putload.py
# next to this checkout). Installs what it needs when missing: etcd-server and etcd-client from
# Debian, a Python venv with grpcio (VENV, default /tmp/gk-bench-venv).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GK=${GK:-$ROOT/target/release/gatekeeper}
PUTLOAD=${PUTLOAD:-$ROOT/../shared/bench/putload.py}
VENV=${VENV:-/tmp/gk-bench-venv}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-"1 16 64 256"}
SEQ_N=${SEQ_N:-2000}
CONC_N=${CONC_N:-20000}
[ -x "$GK" ] || { echo "build first: cargo build --release -p gatekeeper" >&2; exit 1; }
[ -f "$PUTLOAD" ] || { echo "no load generator at $PUTLOAD (set PUTLOAD)" >&2; exit 1; }
if ! command -v etcd >/dev/null; then
  apt-get update -qq && apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q grpcio
fi
PY=$VENV/bin/python
WORK=$(mktemp -d /tmp/cmpw.XXXXXX)
PIDS=()
log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 2
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

C=$WORK/certs
"$GK" certs dev-cluster --out "$C" --nodes 3 >/dev/null
TLS=(--ca "$C/ca.pem" --cert "$C/operator.pem" --key "$C/operator.key")

for v in $(compgen -e | grep -E '^ETCD(CTL)?_' || true); do unset "$v"; done
export ETCDCTL_API=3
IC="m1=https://127.0.0.1:32380,m2=https://127.0.0.1:32390,m3=https://127.0.0.1:32400"
for i in 1 2 3; do
  CP=$((32369 + 10 * i)); PP=$((CP + 1))
  etcd --name m$i --data-dir "$WORK/m$i.etcd" \
    --listen-client-urls https://127.0.0.1:$CP --advertise-client-urls https://127.0.0.1:$CP \
    --listen-peer-urls https://127.0.0.1:$PP --initial-advertise-peer-urls https://127.0.0.1:$PP \
    --initial-cluster "$IC" --initial-cluster-token cmp-$$ --initial-cluster-state new \
    --cert-file "$C/node-$i.pem" --key-file "$C/node-$i.key" \
    --client-cert-auth --trusted-ca-file "$C/ca.pem" \
    --peer-cert-file "$C/node-$i.pem" --peer-key-file "$C/node-$i.key" \
    --peer-client-cert-auth --peer-trusted-ca-file "$C/ca.pem" \
    --heartbeat-interval 100 --election-timeout 1000 --log-level error >"$WORK/etcd$i.log" 2>&1 &
  PIDS+=($!)
done

for i in 1 2 3; do
  cat >"$WORK/gk$i.toml" <<EOF
node_id = $i
data_dir = "$WORK/gk$i"
raft_listen = "127.0.0.1:$((37100 + i))"
api_listen = "127.0.0.1:$((38100 + i))"
admin_listen = "127.0.0.1:$((39100 + i))"
tls_ca_file = "$C/ca.pem"
tls_cert_file = "$C/node-$i.pem"
tls_key_file = "$C/node-$i.key"
mode = "development"
EOF
  RUST_LOG=warn "$GK" node --config "$WORK/gk$i.toml" >"$WORK/gk$i.log" 2>&1 &
  PIDS+=($!)
done
export GATEKEEPER_ADMIN_CA=$C/ca.pem GATEKEEPER_ADMIN_CERT=$C/operator.pem GATEKEEPER_ADMIN_KEY=$C/operator.key
sleep 2
"$GK" admin --endpoint 127.0.0.1:39101 init \
  --member 1=127.0.0.1:37101=127.0.0.1:38101 \
  --member 2=127.0.0.1:37102=127.0.0.1:38102 \
  --member 3=127.0.0.1:37103=127.0.0.1:38103 >&2

ETCDTLS=(--cacert "$C/ca.pem" --cert "$C/operator.pem" --key "$C/operator.key")
EL=""
for _ in $(seq 1 60); do
  EL=$(etcdctl "${ETCDTLS[@]}" --endpoints=https://127.0.0.1:32379,https://127.0.0.1:32389,https://127.0.0.1:32399 \
    endpoint status -w json 2>/dev/null |
    "$PY" -c 'import json,sys; d=json.load(sys.stdin); print([e["Endpoint"] for e in d if e["Status"]["leader"]==e["Status"]["header"]["member_id"]][0].removeprefix("https://"))' 2>/dev/null || true)
  [ -n "$EL" ] && break
  sleep 0.5
done
# Gatekeeper's leader, once the cluster unsealed epoch 0 (the keeper is then idle).
GL=""
for _ in $(seq 1 120); do
  S=$("$GK" admin --endpoint 127.0.0.1:39101 status --json 2>/dev/null || true)
  lid=$(echo "$S" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d.get("leader_id") or "")' 2>/dev/null || true)
  if [ -n "$lid" ] && echo "$S" | grep -q '"unsealed"'; then GL="127.0.0.1:$((39100 + lid))"; break; fi
  sleep 0.5
done
[ -n "$EL" ] && [ -n "$GL" ] || { log "clusters not ready (etcd '$EL', gatekeeper '$GL')"; tail -5 "$WORK"/gk1.log "$WORK"/etcd1.log >&2; exit 1; }
log "etcd leader $EL, gatekeeper leader $GL (TLS on both; $(nproc) cores)"
sleep 2

OUT=$WORK/results.jsonl
for r in $(seq 1 "$ROUNDS"); do
  for c in $CLIENTS; do
    for sys in etcd gatekeeper; do
      ep=$EL
      [ $sys = gatekeeper ] && ep=$GL
      if [ "$c" = 1 ]; then n=$SEQ_N; conns=1; else n=$CONC_N; conns=$((c < 8 ? c : 8)); fi
      "$PY" "$PUTLOAD" --method $sys --system $sys --endpoint "$ep" --clients "$c" --conns $conns \
        --n $n --value-size 256 --prefix "/b/r$r/c$c/" --max-seconds 30 "${TLS[@]}" |
        tee -a "$OUT" || true
    done
  done
done

"$PY" - "$OUT" <<'EOF'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("\nclients | etcd ops/s (median) | gatekeeper ops/s (median) | gk/etcd | etcd p50 ms | gk p50 ms")
for c in sorted({r["clients"] for r in rows}):
    e = [r for r in rows if r["clients"] == c and r["system"] == "etcd"]
    g = [r for r in rows if r["clients"] == c and r["system"] == "gatekeeper"]
    if not e or not g:
        continue
    eo = st.median(r["ops_per_s"] for r in e); go = st.median(r["ops_per_s"] for r in g)
    ep = st.median(r["p50_ms"] for r in e); gp = st.median(r["p50_ms"] for r in g)
    print(f"{c:7d} | {eo:19.0f} | {go:25.0f} | {go/eo:7.2f} | {ep:11.2f} | {gp:9.2f}")
EOF
