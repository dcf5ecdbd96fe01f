#!/bin/bash
# Create a coreos-assembler work directory for Example OS.
#
#   init-workdir.sh [--git] WORKDIR REPO_URL
#
# Result:
#   WORKDIR/src/config/   copy of examples/config, with example.repo generated
#                         from example.repo.in (@REPO_URL@ replaced)
#   WORKDIR/builds/ tmp/ cache/   empty if new; left as they are otherwise
#
# REPO_URL is where examples/build-repo.sh put the repo: file:///abs/path,
# http(s)://..., or a plain absolute path (turned into file://).
#
# Rerunning replaces src/config (so edits made there are lost) and keeps
# builds/, tmp/ and cache/.
#
# --git makes src/config a git repository with one commit, for tools that
# record the config's git revision as coreos-assembler does.
set -euo pipefail

PROG=init-workdir.sh
die() { echo "$PROG: error: $*" >&2; exit 1; }
usage() { echo "usage: $PROG [--git] WORKDIR REPO_URL" >&2; exit 2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

GIT=0
ARGS=()
for a in "$@"; do
    case "$a" in
        --git) GIT=1 ;;
        -h|--help) usage ;;
        -*) die "unknown option '$a'" ;;
        *) ARGS+=("$a") ;;
    esac
done
[ ${#ARGS[@]} -eq 2 ] || usage
WORKDIR=${ARGS[0]}
URL=${ARGS[1]}

case "$URL" in
    /*) URL=file://$URL ;;
    file:///*|http://*|https://*) ;;
    *) die "REPO_URL must be file:///..., http(s)://... or an absolute path, got '$URL'" ;;
esac

mkdir -p "$WORKDIR/src" "$WORKDIR/builds" "$WORKDIR/tmp" "$WORKDIR/cache"

# Assemble next to the final place, then swap, so a failure never leaves a
# half-written config behind.
NEW=$WORKDIR/src/.config.new
rm -rf "$NEW"
cp -R "$HERE/config" "$NEW"
# Escape the characters that are special in a sed replacement.
url_esc=$(printf '%s' "$URL" | sed 's/[&|\\]/\\&/g')
sed "s|@REPO_URL@|$url_esc|g" "$NEW/example.repo.in" > "$NEW/example.repo"
rm "$NEW/example.repo.in"

if [ "$GIT" = 1 ]; then
    command -v git >/dev/null || die "--git needs git"
    # Fixed identity and dates: same input, same commit id, and no
    # dependency on the user's git configuration.
    (
        cd "$NEW"
        export GIT_AUTHOR_NAME="Example OS" GIT_AUTHOR_EMAIL=example@example.invalid
        export GIT_COMMITTER_NAME="Example OS" GIT_COMMITTER_EMAIL=example@example.invalid
        export GIT_AUTHOR_DATE="2024-01-01T00:00:00Z" GIT_COMMITTER_DATE="2024-01-01T00:00:00Z"
        git init -q -b main .
        git add -A
        git -c commit.gpgsign=false commit -q -m "Example OS config"
    ) || die "could not make src/config a git repository"
fi

rm -rf "$WORKDIR/src/config"
mv "$NEW" "$WORKDIR/src/config"
echo "$PROG: $WORKDIR/src/config ready (repo: $URL)" >&2
