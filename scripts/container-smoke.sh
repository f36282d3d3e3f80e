#!/usr/bin/env bash
# Build the image with podman and run it as a fleet on 127.0.0.1: two containers (read-only
# root filesystems, unprivileged) share one mounted model repository. POST /predict to both,
# roll a new model out with one POST /admin/reload to the first, and check that both serve
# it. Exits non-zero on any failure; stops only the containers it started.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=../shared/tools/podman-build.sh
IMAGE=localhost/ctrserve:latest
PORT_A=${PORT_A:-18123}
PORT_B=${PORT_B:-18124}
TOKEN=smoke-token-$$
WORKERS=2
PY=.venv/bin/python

make model
"$BUILD" -t "$IMAGE" .
podman --runtime runc image inspect "$IMAGE" --format 'image size: {{.Size}} bytes' \
  | awk '{printf "%s %s %.0f MB\n", $1, $2, $3 / 1e6}'

# The shared volume: a copy of the default repository, and a second model to roll out.
work=$(mktemp -d)
names=()
cleanup() {
  for name in "${names[@]}"; do podman --runtime runc stop -t 10 "$name" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cp -r models/default "$work/repository"
"$PY" -m training train --data data/synth.csv --model lr --epochs 1 --out "$work/export" --no-progress >/dev/null
chmod -R a+rwX "$work"

for port in "$PORT_A" "$PORT_B"; do
  name=ctrserve-smoke-$$-$port
  # podman run options go before the image: the tool passes them straight to `podman run`.
  "$BUILD" --run -d --name "$name" --read-only \
    -v "$work/repository:/models/default" -v "$work/export:/exports/lr:ro" \
    -e CTR_HOST=127.0.0.1 -e CTR_PORT="$port" -e CTR_WORKERS="$WORKERS" -e CTR_POLL_INTERVAL_S=1 \
    -e CTR_RELOAD_TOKEN="$TOKEN" -e CTR_PUBLISH_ROOT=/exports "$IMAGE" >/dev/null
  names+=("$name")
done

version_of() { curl -fsS "http://127.0.0.1:$1/model" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])'; }
for port in "$PORT_A" "$PORT_B"; do
  for _ in $(seq 1 60); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 1
  done
  curl -fsS "http://127.0.0.1:$port/readyz"; echo
  answer=$(curl -fsS -X POST "http://127.0.0.1:$port/predict" -H 'content-type: application/json' \
    -d '{"features": {"c0": "c0_1", "c3": "c3_7", "n0": 2.5}}')
  echo "$answer"
  python3 -c 'import json, sys; a = json.loads(sys.argv[1]); assert 0 < a["prediction"] < 1, a' "$answer"
done
old=$(version_of "$PORT_A")

reload=$(curl -fsS -X POST "http://127.0.0.1:$PORT_A/admin/reload" -H "Authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"model_dir": "/exports/lr"}')
echo "reload via the first container: $reload"
new=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["version"])' "$reload")
[ "$new" != "$old" ] || { echo "the reload did not change the version" >&2; exit 1; }
# Every worker of a container says what it serves in ctr_model_info (one series per pid);
# /model alone answers for whichever worker took the request.
every_worker_serves() {
  local defaults
  defaults=$(curl -fsS "http://127.0.0.1:$1/metrics" | grep '^ctr_model_info{' | grep ' 1.0$' \
    | grep -E 'serves="([^"]*,)?default[,"]' || true)
  [ "$(grep -c "version=\"$new\"" <<< "$defaults")" = "$WORKERS" ] \
    && [ "$(grep -c . <<< "$defaults")" = "$WORKERS" ]
}
for port in "$PORT_A" "$PORT_B"; do
  for _ in $(seq 1 20); do
    every_worker_serves "$port" && break
    sleep 0.5
  done
  every_worker_serves "$port" || { echo "a worker on $port still serves $old" >&2; exit 1; }
  echo "container on $port serves $new on all $WORKERS workers"
done

uid_in=$(podman --runtime runc exec "${names[0]}" id -u)
[ "$uid_in" != 0 ] || { echo "container runs as root" >&2; exit 1; }
echo "container smoke test passed: 2 containers share one repository; one reload reached both (uid $uid_in, read-only root filesystems)"
