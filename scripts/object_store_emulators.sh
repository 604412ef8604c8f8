#!/usr/bin/env bash
# The object sink on S3 and Azure Blob Storage against locally run implementations of their APIs:
# moto in server mode (PyPI `moto[server]`) for S3 and Azurite (npm `azurite`) for Azure Blob,
# each on a spare port of 127.0.0.1, stopped on exit. Runs the `s3::` and `azure::` tests of
# iot-stream's `object_sink` (all features); extra arguments go to the test binary.
#
# Installs what it needs: moto, boto3 and azure-storage-blob (the services' own clients, which read
# the archive back) and pyarrow into .venv; Azurite into target/azurite.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check pyarrow 'moto[server]' boto3 azure-storage-blob
if [ ! -x target/azurite/node_modules/.bin/azurite-blob ]; then
  mkdir -p target/azurite
  (cd target/azurite && npm install --silent --no-audit --no-fund azurite@3)
fi

spare_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() { # port name pid
  for _ in $(seq 100); do
    up "$1" && return 0
    kill -0 "$3" 2>/dev/null || { echo "$2 exited at start" >&2; return 1; }
    sleep 0.2
  done
  echo "$2 did not listen on $1" >&2
  return 1
}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

s3_port=$(spare_port)
.venv/bin/moto_server -H 127.0.0.1 -p "$s3_port" > "$work/moto.log" 2>&1 &
pids+=($!)
wait_up "$s3_port" moto "${pids[-1]}" || { cat "$work/moto.log" >&2; exit 1; }

az_port=$(spare_port)
# --loose: Azurite otherwise rejects headers it does not implement; --skipApiVersionCheck: the
# service version object_store sends may be newer than this Azurite's.
target/azurite/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort "$az_port" \
  --location "$work/azurite" --silent --loose --skipApiVersionCheck > "$work/azurite.log" 2>&1 &
pids+=($!)
wait_up "$az_port" azurite "${pids[-1]}" || { cat "$work/azurite.log" >&2; exit 1; }

export IOT_STREAM_S3_ENDPOINT="http://127.0.0.1:$s3_port"
export IOT_STREAM_AZURITE_ENDPOINT="http://127.0.0.1:$az_port/devstoreaccount1"
echo "moto on $IOT_STREAM_S3_ENDPOINT, Azurite on $IOT_STREAM_AZURITE_ENDPOINT"
# CARGO_FLAGS: the packages and features to build with (CI passes its one all-features selection).
# shellcheck disable=SC2086
cargo test ${CARGO_FLAGS:--p iot-stream --all-features} --test object_sink -- s3:: azure:: "$@"
