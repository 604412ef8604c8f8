#!/usr/bin/env bash
# Each crate with its features off, then (without --quick) each of its features alone, under
# `cargo clippy -D warnings`: a crate must build with none, and a feature must not need another to
# build. The explicit form of `cargo hack --each-feature`.
#
#   scripts/check_features.sh          every crate: features off, then each feature alone
#   scripts/check_features.sh --quick  every crate with its features off (what .ci/run runs)
#
# The full form is about 36 clippy runs, each a dependency resolution of its own: 10 minutes on a
# 2-core machine, a fifth of the CI budget, so CI runs the quick form and a change that adds or
# reshapes a feature runs the full one before it is committed.
#
# Skipped: a feature that no library source of its crate tests and that brings no optional
# dependency of its own, only other features of the crate or of a dependency the crate always has
# (the interop switches such as `client-tests = ["client"]`, which test files alone use; the
# root's forwards such as `s3 = ["iot-stream/s3"]`, whose crate is checked with it alone in its
# own turn). Its library is the code another run already checked; the all-features check covers
# the combination. Tests are built with the features their dev-dependencies enable, so only
# libraries are checked here.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
case "${1:-}" in
  --quick) quick=true ;;
  "") ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

lib_features() { # CRATE: the crate's features that change what its library compiles
  cargo metadata --format-version 1 --no-deps | python3 -c '
import json, pathlib, sys
crate = sys.argv[1]
p = next(p for p in json.load(sys.stdin)["packages"] if p["name"] == crate)
src = pathlib.Path(p["manifest_path"]).parent / "src"
text = "".join(f.read_text() for f in src.rglob("*.rs"))
feats = p["features"]
always = {(d.get("rename") or d["name"]).replace("-", "_") for d in p["dependencies"]
          if not d["optional"] and d["kind"] is None}
def forward(e):
    return e in feats or ("/" in e and e.split("/")[0].rstrip("?").replace("-", "_") in always)
def skipped(f):
    return all(forward(e) for e in feats[f]) and f"feature = \"{f}\"" not in text
print(" ".join(f for f in feats if f != "default" and not skipped(f)))' "$1"
}

for crate in iot-core iot-identity iot-registry iot-provisioning iot-stream iot-gateway iot-sdk; do
  echo "$crate: features off"
  cargo clippy -q -p "$crate" --lib --no-default-features -- -D warnings
  if ! $quick; then
    for feature in $(lib_features "$crate"); do
      echo "$crate: $feature alone"
      cargo clippy -q -p "$crate" --lib --no-default-features --features "$feature" -- -D warnings
    done
  fi
done
