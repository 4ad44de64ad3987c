#!/usr/bin/env bash
# The compose cluster (deploy/compose.yaml), tested as an operator would use it: up and healthy;
# the demo miner gets its key over TLS; `docker kill` of the leader (writes and key requests
# recover); one node cut off the network and healed; `restart` of every node (they unseal with no
# operator action and serve the same key); then down, volumes removed. Prints how long each step
# took. Builds the image first (deploy/build-image.sh) unless GATEKEEPER_SKIP_IMAGE_BUILD=1.
#
# Usage: deploy/compose-test.sh            Environment: GATEKEEPER_IMAGE (default
# gatekeeper:compose-test), GATEKEEPER_IMAGE_PROFILE (release|debug, passed to build-image.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

image="${GATEKEEPER_IMAGE:-gatekeeper:compose-test}"
export GATEKEEPER_IMAGE="$image"
project="gkcompose$$"
if docker compose version >/dev/null 2>&1; then dc=(docker compose); else dc=(docker-compose); fi
compose() { "${dc[@]}" -p "$project" -f deploy/compose.yaml "$@"; }
tool() { compose exec -T demo-miner "$@"; }

timings=()
step_start=$SECONDS
step() {
  echo "== $*"
  step_start=$SECONDS
  step_name="$*"
}
done_step() { timings+=("$(printf '%-44s %4d s' "$step_name" $((SECONDS - step_start)))"); }
fail() {
  echo "FAILED: $*" >&2
  compose ps >&2 || true
  compose logs --tail 40 >&2 || true
  exit 1
}
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local limit=$1 start=$SECONDS
  shift
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - start < limit )) || return 1
    sleep 1
  done
}
cid() { compose ps -q "$1"; }
health() { docker inspect --format '{{.State.Health.Status}}' "$(cid "$1")"; }
healthy() { [ "$(health "$1")" = healthy ]; }
all_healthy() { healthy gk1 && healthy gk2 && healthy gk3; }
status_json() { tool gatekeeper admin --endpoint "gk$1:8102" --timeout-secs 5 status --json; }
leader() {
  local i
  for i in 1 2 3; do
    if status_json "$i" 2>/dev/null | grep -Eq '"role": ?"leader"'; then echo "$i"; return 0; fi
  done
  return 1
}
exited() { [ "$(docker inspect --format '{{.State.Status}}' "$(cid "$1")")" = exited ]; }
fetch() {
  tool gatekeeper miner fetch-key "$@" --worker-key-file /data/worker.json --kind worker \
    --timeout-ms 3000 --rounds 1
}
fetch_all() { fetch --endpoint gk1:8101 --endpoint gk2:8101 --endpoint gk3:8101; }
put_via() { tool gatekeeper admin --endpoint "gk$1:8102" --timeout-secs 5 put "$2" "$3"; }
public_key() { sed -n 's/.*"public_key":"\([0-9a-f]*\)".*/\1/p'; }

if [ "${GATEKEEPER_SKIP_IMAGE_BUILD:-0}" != 1 ]; then
  step "build the image"
  deploy/build-image.sh "$image"
  done_step
fi

step "up: chain, certificates, 3 nodes, init, demo miner"
compose up -d
wait_for 240 exited bootstrap-init || fail "bootstrap-init did not finish"
[ "$(docker inspect --format '{{.State.ExitCode}}' "$(cid bootstrap-init)")" = 0 ] \
  || fail "bootstrap-init failed"
wait_for 120 all_healthy || fail "the nodes did not become healthy"
done_step

step "demo miner: its worker key over TLS"
wait_for 90 fetch_all || fail "the demo miner got no key"
key=$(fetch_all | public_key)
[ -n "$key" ] || fail "no public key in the miner's answer"
echo "worker key $key"
miner_log=$(compose logs demo-miner)
grep -q '"public_key"' <<<"$miner_log" || fail "the demo miner's own loop fetched nothing"
done_step

step "docker kill the leader: writes and keys recover"
l=$(leader) || fail "no leader"
others=()
for i in 1 2 3; do [ "$i" = "$l" ] || others+=("$i"); done
docker kill "$(cid "gk$l")" >/dev/null
t0=$SECONDS
wait_for 30 put_via "${others[0]}" drill after-kill || fail "writes did not recover after the leader died"
echo "writes back after $((SECONDS - t0)) s"
wait_for 30 fetch --endpoint "gk${others[0]}:8101" --endpoint "gk${others[1]}:8101" \
  || fail "key requests did not recover"
echo "keys served after $((SECONDS - t0)) s"
compose start "gk$l" >/dev/null
wait_for 120 healthy "gk$l" || fail "the killed node did not come back healthy"
[ "$(fetch --endpoint "gk$l:8101" | public_key)" = "$key" ] || fail "gk$l serves another key"
done_step

step "network disconnect of one node, then heal"
l=$(leader) || fail "no leader"
f=1
[ "$f" = "$l" ] && f=2
net="${project}_default"
docker network disconnect "$net" "$(cid "gk$f")"
put_via "$l" drill during-partition || fail "the majority did not accept a write"
# Cut off for real: asked on its own host, the isolated node cannot write (no leader reachable).
if compose exec -T "gk$f" gatekeeper admin --endpoint 127.0.0.1:8102 --ca /certs/ca/ca.pem \
  --cert /certs/operator/operator.pem --key /certs/operator/operator.key --server-name "gk$f" \
  --timeout-secs 5 put drill isolated-write >/dev/null 2>&1; then
  fail "gk$f accepted a write while cut off"
fi
docker network connect --alias "gk$f" "$net" "$(cid "gk$f")"
wait_for 60 put_via "$f" drill after-heal || fail "gk$f cannot write after the heal"
# It caught up: a linearizable read through it sees the last write, and the isolated write is
# nowhere.
tool gatekeeper admin --endpoint "gk$f:8102" --timeout-secs 5 get drill | grep -q after-heal \
  || fail "gk$f does not read the last write"
[ "$(fetch --endpoint "gk$f:8101" | public_key)" = "$key" ] || fail "gk$f serves another key"
done_step

step "restart every node: unseal with no operator action"
compose restart gk1 gk2 gk3 >/dev/null 2>&1
sleep 5
wait_for 180 all_healthy || fail "the nodes did not unseal after the restart"
for i in 1 2 3; do
  [ "$(fetch --endpoint "gk$i:8101" | public_key)" = "$key" ] || fail "gk$i serves another key"
done
done_step

step "down, volumes removed"
compose down -v --remove-orphans >/dev/null 2>&1
trap - EXIT
done_step

echo "== compose test passed"
printf '%s\n' "${timings[@]}"
