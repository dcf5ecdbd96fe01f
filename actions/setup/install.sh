#!/usr/bin/env bash
# Put the cosa binaries on PATH for the rest of the job: from COSA_PATH if given,
# else the release asset for this runner (sha256 verified), else cargo install.
set -euo pipefail
fail() { echo "::error title=cosa setup::$*"; exit 1; }
bins=(cosa-changed cosa-compose cosa-image cosa-extend cosa-fetch cosa-upload)

if [ -n "${COSA_PATH:-}" ]; then
  dir=$(cd "$COSA_PATH" && pwd) || fail "path '$COSA_PATH' does not exist"
  for b in "${bins[@]}"; do [ -x "$dir/$b" ] || fail "path '$COSA_PATH' has no $b"; done
else
  [ -n "${COSA_VERSION:-}" ] || fail "no version to install: set the 'version' input"
  case "$(uname -m)" in x86_64|aarch64) arch=$(uname -m) ;; *) fail "unsupported runner architecture $(uname -m)" ;; esac
  dir=${RUNNER_TOOL_CACHE:-$HOME/.cache}/cosa/$COSA_VERSION/$arch
  if [ ! -x "$dir/cosa-compose" ]; then
    asset="cosa-$COSA_VERSION-$arch-linux.tar.gz"
    url="https://github.com/$COSA_REPOSITORY/releases/download/$COSA_VERSION/$asset"
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    if curl -fsSL -o "$tmp/$asset" "$url" && curl -fsSL -o "$tmp/$asset.sha256" "$url.sha256"; then
      (cd "$tmp" && sha256sum -c "$asset.sha256") || fail "checksum mismatch for $asset"
      mkdir -p "$dir" && tar -C "$dir" -xzf "$tmp/$asset"
    else
      echo "::warning title=cosa setup::no release asset $asset; building with cargo install"
      command -v cargo >/dev/null || fail "no release asset and no cargo to build cosa"
      cargo install --locked --root "$tmp/root" --git "https://github.com/$COSA_REPOSITORY" --tag "$COSA_VERSION"
      mkdir -p "$dir" && cp "$tmp/root/bin/"cosa-* "$dir/"
    fi
  fi
fi
echo "$dir" >> "$GITHUB_PATH"
echo "bin=$dir" >> "$GITHUB_OUTPUT"
echo "cosa binaries: $dir"
