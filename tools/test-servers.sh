#!/usr/bin/env bash
# Install the S3 servers the store tests run on loopback, idempotently, into a
# versioned cache directory (nothing is installed system-wide):
#
#   ${COSA_TEST_TOOLS:-$HOME/.cache/cosa-test-tools}/v1/
#     bin/s3s-fs        s3s-fs 0.14.1 (crates.io; real SigV4, conditional writes)
#     bin/garage        Garage 2.5.0 (crates.io; ignores PUT preconditions)
#     moto/bin/moto_server   moto[server] in a virtualenv (PyPI; AWS semantics, no auth)
#
# Usage: tools/test-servers.sh [s3s-fs] [moto] [garage]   (default: all three)
#
# The tests find the servers there (tests/integration/s3server.rs). A server that
# is already installed at the pinned version is not rebuilt, so running this again
# costs a few seconds. A cold Garage build takes about 17 minutes on 2 cores.
set -euo pipefail

S3S_FS_VERSION=0.14.1
GARAGE_VERSION=2.5.0
MOTO_SPEC='moto[server]==5.2.5'

ROOT="${COSA_TEST_TOOLS:-$HOME/.cache/cosa-test-tools}/v1"
mkdir -p "$ROOT/bin"

want=("$@")
if [ ${#want[@]} -eq 0 ]; then want=(s3s-fs moto garage); fi

# Installed at the pinned version? A stamp file is written after a successful
# install, so an interrupted build is redone.
installed() { [ -x "$ROOT/bin/$1" ] && [ "$(cat "$ROOT/.$1.version" 2>/dev/null)" = "$2" ]; }

install_crate() { # name version [cargo install args...]
  local name=$1 version=$2
  shift 2
  if installed "$name" "$version"; then
    echo "==> $name $version already installed in $ROOT"
    return
  fi
  command -v cargo >/dev/null || { echo "error: cargo not found: install Rust first" >&2; exit 1; }
  echo "==> building $name $version (cargo install)"
  cargo install "$name" --version "$version" --locked --root "$ROOT" "$@"
  echo "$version" >"$ROOT/.$name.version"
}

install_moto() {
  local venv="$ROOT/moto"
  if [ -x "$venv/bin/moto_server" ] && [ "$(cat "$ROOT/.moto.version" 2>/dev/null)" = "$MOTO_SPEC" ]; then
    echo "==> moto already installed in $venv"
    return
  fi
  echo "==> installing $MOTO_SPEC into $venv"
  # Debian's python3 (python3-venv comes from tools/setup.sh), not a pyenv one.
  local py=/usr/bin/python3
  [ -x "$py" ] || py=$(command -v python3)
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$MOTO_SPEC"
  echo "$MOTO_SPEC" >"$ROOT/.moto.version"
}

for w in "${want[@]}"; do
  case "$w" in
    s3s-fs) install_crate s3s-fs "$S3S_FS_VERSION" --features binary ;;
    garage) install_crate garage "$GARAGE_VERSION" ;;
    moto) install_moto ;;
    *) echo "error: unknown server '$w' (s3s-fs, moto, garage)" >&2; exit 2 ;;
  esac
done
echo "==> test servers ready in $ROOT"
