#!/usr/bin/env bash
# Run the whole cosa pipeline on the bundled example OS:
#   host setup -> build the example RPM repo -> work directory -> cosa-compose
#   -> cosa-changed -> cosa-image (qemu disk) -> boot it under QEMU
#   -> cosa-extend (aws, gcp) -> cosa-upload to a file:// store -> cosa-fetch of
#   the build, verified, into a second work directory.
# Usage: tools/example.sh [WORKDIR]   (default: ./example-workdir)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
wd=${1:-$top/example-workdir}
case "$wd" in /*) ;; *) wd=$top/$wd ;; esac

bash tools/setup.sh
echo "==> building cosa (release)"
cargo build --release --locked --quiet
# Where cargo put them (CARGO_TARGET_DIR or .cargo/config may move target/).
bin=$(cargo metadata --locked --no-deps --format-version 1 |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release

echo "==> building the example OS repository"
examples/build-repo.sh "$wd.repo"
examples/init-workdir.sh --git "$wd" "file://$wd.repo"

before=$(readlink "$wd/builds/latest" 2>/dev/null || echo none)
echo "==> cosa-compose"
"$bin/cosa-compose" --workdir "$wd"
echo "==> cosa-compose again (nothing changed: a no-op)"
"$bin/cosa-compose" --workdir "$wd"
echo "==> cosa-changed"
"$bin/cosa-changed" --workdir "$wd" --since "$before"

if [ -x "$bin/cosa-image" ]; then
  echo "==> cosa-image (qemu)"
  "$bin/cosa-image" --workdir "$wd" --platform qemu
  echo "==> booting the qemu image (TCG): look for the COSA-EXAMPLE-OS-BOOTED line"
  # TCG, as on a hosted CI runner: a /dev/kvm that boots a probe can still fail a
  # real kernel under nested virtualisation ("KVM internal error").
  timeout 600 "$bin/cosa-image" --workdir "$wd" run --accel tcg
fi
echo "==> cosa-extend (aws vmdk, gcp tar.gz, derived from the same disk)"
"$bin/cosa-extend" --workdir "$wd" --platform aws,gcp
store=$wd.store
mkdir -p "$store"
echo "==> cosa-upload to file://$store (an s3:// URL works the same way)"
"$bin/cosa-upload" --workdir "$wd" --url "file://$store"
echo "==> cosa-changed against the store (the build is there now: changed=false)"
"$bin/cosa-changed" --workdir "$wd" --against "file://$store"
echo "==> cosa-fetch of the build and its artifacts into $wd.fetched"
mkdir -p "$wd.fetched"
"$bin/cosa-fetch" --workdir "$wd.fetched" --url "file://$store" --artifact all
echo "==> done: $wd/builds"
ls -l "$wd/builds/latest/"*/
