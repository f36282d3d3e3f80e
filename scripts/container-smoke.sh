#!/usr/bin/env bash
# Build the image with podman, run it on 127.0.0.1 (read-only root filesystem), POST /predict,
# check the answer, stop the container. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=../shared/tools/podman-build.sh
IMAGE=localhost/ctrserve:latest
NAME=ctrserve-smoke-$$
PORT=${PORT:-18123}

make model
"$BUILD" -t "$IMAGE" .
podman --runtime runc image inspect "$IMAGE" --format 'image size: {{.Size}} bytes' \
  | awk '{printf "%s %s %.0f MB\n", $1, $2, $3 / 1e6}'

# podman run options go before the image: the tool passes them straight to `podman run`.
"$BUILD" --run -d --name "$NAME" --read-only \
  -e CTR_HOST=127.0.0.1 -e CTR_PORT="$PORT" "$IMAGE" >/dev/null
trap 'podman --runtime runc stop -t 10 "$NAME" >/dev/null 2>&1 || true' EXIT

for _ in $(seq 1 60); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/readyz"; echo
answer=$(curl -fsS -X POST "http://127.0.0.1:$PORT/predict" -H 'content-type: application/json' \
  -d '{"features": {"c0": "c0_1", "c3": "c3_7", "n0": 2.5}}')
echo "$answer"
python3 -c 'import json, sys; a = json.loads(sys.argv[1]); assert 0 < a["prediction"] < 1, a; assert a["model_version"], a' "$answer"
whoami_in=$(podman --runtime runc exec "$NAME" id -u)
[ "$whoami_in" != 0 ] || { echo "container runs as root" >&2; exit 1; }
echo "container smoke test passed (uid $whoami_in, read-only root filesystem)"
