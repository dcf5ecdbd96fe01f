#!/bin/bash
# Build the Example OS RPMs and publish them as an rpm-md repository.
#
#   build-repo.sh OUTDIR [--release-bump NAME=N]...
#
# OUTDIR ends up holding Packages/*.rpm and repodata/ (createrepo_c). Both are
# regenerated on every run, so OUTDIR always describes exactly one build;
# copy it first if you need the previous state. Other files in OUTDIR are left
# alone.
#
# --release-bump example-hello=2 builds that package with "Release: 2"
# instead of 1 (tests use it to publish a new package version). Repeatable.
#
# The kernel comes from the host distribution: the .deb files are fetched once
# with `apt-get download` into ${XDG_CACHE_HOME:-$HOME/.cache}/cosa-example/
# and reused afterwards, so reruns need no network.
#
# Builds are reproducible: SOURCE_DATE_EPOCH (default below) pins RPM build
# times, file mtimes, the initramfs and the repodata timestamps, so two runs
# with the same inputs produce identical files.
#
# Environment:
#   SOURCE_DATE_EPOCH         default 1704067200 (2024-01-01T00:00:00Z)
#   EXAMPLE_KERNEL_META       kernel metapackage to follow (default: probed)
#   EXAMPLE_BUSYBOX           static busybox to ship (default /bin/busybox)
#   XDG_CACHE_HOME, TMPDIR    as usual
set -eEuo pipefail

PROG=build-repo.sh
# die exits with a distinctive status so that, when it runs inside $(...), the
# ERR trap of the outer shell knows the error was already reported.
DIED=97
die() { echo "$PROG: error: $*" >&2; exit $DIED; }
info() { echo "$PROG: $*" >&2; }
# With set -e a failing command would otherwise end the script without a word.
trap 'rc=$?; [ $rc -eq $DIED ] && exit $DIED; die "command failed (line $LINENO, exit $rc): $BASH_COMMAND"' ERR

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() { echo "usage: $PROG OUTDIR [--release-bump NAME=N]..." >&2; exit 2; }

OUTDIR=
declare -A BUMP=()
while [ $# -gt 0 ]; do
    case "$1" in
        --release-bump)
            [ $# -ge 2 ] || usage
            [[ $2 =~ ^([a-z0-9-]+)=([0-9][0-9a-zA-Z._]*)$ ]] \
                || die "--release-bump wants NAME=RELEASE (e.g. example-hello=2), got '$2'"
            [ -f "$HERE/rpms/${BASH_REMATCH[1]}.spec" ] \
                || die "--release-bump: no package '${BASH_REMATCH[1]}' (no rpms/${BASH_REMATCH[1]}.spec)"
            BUMP[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
            shift 2 ;;
        --release-bump=*)
            set -- --release-bump "${1#*=}" "${@:2}" ;;
        -h|--help) usage ;;
        -*) die "unknown option '$1'" ;;
        *) [ -z "$OUTDIR" ] || usage; OUTDIR=$1; shift ;;
    esac
done
[ -n "$OUTDIR" ] || usage

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200}
BUSYBOX=${EXAMPLE_BUSYBOX:-/bin/busybox}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/cosa-example

for tool in rpmbuild createrepo_c apt-get apt-cache dpkg-deb cpio gzip; do
    command -v "$tool" >/dev/null || die "'$tool' not found (apt-get install rpm createrepo-c cpio)"
done
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (apt-get install busybox-static)"
# The initramfs and the OS have no libc: a dynamically linked busybox would not run.
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; install busybox-static or set EXAMPLE_BUSYBOX"
fi

mkdir -p "$OUTDIR" "$CACHE/debs"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cosa-example-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- 1. Kernel packages from the host distribution ---------------------------

# Only apt-cache (local package lists, no network) is used to decide what to
# fetch, so a warm cache makes the whole build offline.
pkg_known() { apt-cache show --no-all-versions "$1" >/dev/null 2>&1; }

if [ -n "${EXAMPLE_KERNEL_META:-}" ]; then
    META=$EXAMPLE_KERNEL_META
elif pkg_known linux-image-cloud-amd64; then
    META=linux-image-cloud-amd64     # Debian: small kernel aimed at VMs
elif pkg_known linux-image-generic; then
    META=linux-image-generic         # Ubuntu
else
    die "no kernel metapackage known to apt (linux-image-cloud-amd64 or linux-image-generic); run apt-get update"
fi
META_DEPS=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
                --no-replaces --no-enhances "$META" 2>/dev/null) || META_DEPS=
KPKG=$(sed -n '/^ *Depends: \(linux-image-[0-9][^ ]*\)$/{s//\1/p;q}' <<<"$META_DEPS")
[ -n "$KPKG" ] || die "cannot tell which kernel $META depends on (apt-cache depends $META)"
KVER=${KPKG#linux-image-}
KPKGS=("$KPKG")
# Ubuntu splits the modules into linux-modules-<kver>; Debian has none.
if pkg_known "linux-modules-$KVER"; then
    KPKGS+=("linux-modules-$KVER")
fi

# fetch_deb PKG: sets DEB to the cached .deb of PKG, downloading it if needed.
cached_deb() { find "$CACHE/debs" -maxdepth 1 -name "${1}_*.deb" | LC_ALL=C sort | tail -n 1; }
fetch_deb() {
    local pkg=$1
    DEB=$(cached_deb "$pkg")
    if [ -z "$DEB" ]; then
        info "downloading $pkg into $CACHE/debs"
        local tmp
        tmp=$(mktemp -d "$CACHE/debs/.download.XXXXXX")
        # apt-get download runs unprivileged fine; as root it only warns that
        # the _apt user cannot write here.
        if ! (cd "$tmp" && apt-get download -q "$pkg" >"$tmp/log" 2>&1); then
            cat "$tmp/log" >&2
            rm -rf "$tmp"
            die "apt-get download $pkg failed (no network or stale package lists? try apt-get update)"
        fi
        mv "$tmp"/*.deb "$CACHE/debs/"
        rm -rf "$tmp"
        DEB=$(cached_deb "$pkg")
    fi
    [ -n "$DEB" ] || die "no .deb for $pkg in $CACHE/debs after downloading it"
}

KX=$WORK/kernel-extract
mkdir -p "$KX"
for pkg in "${KPKGS[@]}"; do
    fetch_deb "$pkg"
    dpkg-deb -x "$DEB" "$KX"
done

VMLINUZ=
for f in "$KX/boot/vmlinuz-$KVER" "$KX/usr/lib/modules/$KVER/vmlinuz" "$KX/lib/modules/$KVER/vmlinuz"; do
    [ -f "$f" ] && { VMLINUZ=$f; break; }
done
[ -n "$VMLINUZ" ] || die "no vmlinuz for $KVER in ${KPKGS[*]}"
SRCMOD=
for d in "$KX/lib/modules/$KVER" "$KX/usr/lib/modules/$KVER"; do
    [ -d "$d/kernel" ] && { SRCMOD=$d; break; }
done
[ -n "$SRCMOD" ] || die "no modules directory for $KVER in ${KPKGS[*]}"

# --- 2. Select the modules the initramfs needs, dependencies first -----------

# ko_cat FILE: module content, whatever compression the distribution uses.
ko_cat() {
    case "$1" in
        *.ko) cat "$1" ;;
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -qdc "$1" ;;
        *.ko.gz) gzip -dc "$1" ;;
        *) die "unknown module format: $1" ;;
    esac
}

# Module name -> path relative to the modules dir. The kernel treats - and _
# in module names as the same character.
declare -A MODPATH=() BUILTIN=()
while IFS= read -r rel; do
    n=${rel##*/}; n=${n%%.ko*}; n=${n//-/_}
    MODPATH[$n]=$rel
done < <(cd "$SRCMOD" && find kernel -name '*.ko*' | LC_ALL=C sort)
if [ -f "$SRCMOD/modules.builtin" ]; then
    while IFS= read -r rel; do
        n=${rel##*/}; n=${n%%.ko*}; n=${n//-/_}
        BUILTIN[$n]=1
    done < "$SRCMOD/modules.builtin"
fi

# Dependencies are read from the module's own .modinfo section (a list of
# NUL-separated key=value strings), which is what depmod does too. This
# avoids needing kmod's depmod/modinfo, which are not always installed.
mod_depends() {
    ko_cat "$SRCMOD/${MODPATH[$1]}" | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' '
}

ORDER=()                # relative paths, dependencies first
declare -A SEEN=() DEPS=()
visit() {
    local n=${1//-/_} d
    [ -z "${SEEN[$n]:-}" ] || return 0
    SEEN[$n]=1
    if [ -z "${MODPATH[$n]:-}" ]; then
        [ -n "${BUILTIN[$n]:-}" ] || info "warning: kernel $KVER has no module or built-in '$n'; skipped"
        return 0
    fi
    DEPS[$n]=$(mod_depends "$n")
    for d in ${DEPS[$n]}; do visit "$d"; done
    ORDER+=("$n")
}
while read -r line; do
    line=${line%%#*}
    for m in $line; do visit "$m"; done
done < "$HERE/initramfs/modules.list"

# transitive_deps NAME: every module NAME needs, each listed once.
transitive_deps() {
    local -A out=()
    local stack=(${DEPS[$1]:-}) n
    while [ ${#stack[@]} -gt 0 ]; do
        n=${stack[-1]//-/_}; unset 'stack[-1]'
        [ -n "${MODPATH[$n]:-}" ] && [ -z "${out[$n]:-}" ] || continue
        out[$n]=1
        stack+=(${DEPS[$n]:-})
    done
    echo "${!out[@]}"
}

# The tree that becomes /usr/lib/modules/<kver> in example-kernel, and (minus
# vmlinuz and initramfs.img) /lib/modules/<kver> in the initramfs.
KTREE=$WORK/modules-$KVER
mkdir -p "$KTREE"
: > "$KTREE/load-order"
: > "$KTREE/modules.dep"
for n in "${ORDER[@]}"; do
    src=${MODPATH[$n]}
    dst=${src%.ko*}.ko      # ship uncompressed: busybox insmod cannot read zstd
    mkdir -p "$KTREE/$(dirname "$dst")"
    ko_cat "$SRCMOD/$src" > "$KTREE/$dst"
    MODPATH[$n]=$dst
done
for n in "${ORDER[@]}"; do
    echo "${MODPATH[$n]}" >> "$KTREE/load-order"
    # modules.dep lines as depmod writes them, so modprobe works too.
    deps=
    for d in $(transitive_deps "$n"); do deps+=" ${MODPATH[$d]}"; done
    echo "${MODPATH[$n]}:$deps" >> "$KTREE/modules.dep"
done
[ -f "$SRCMOD/modules.builtin" ] && cp "$SRCMOD/modules.builtin" "$KTREE/"
info "kernel $KVER: ${#ORDER[@]} modules for the initramfs"

# --- 3. The initramfs ---------------------------------------------------------

IR=$WORK/initramfs
mkdir -p "$IR/bin" "$IR/dev" "$IR/proc" "$IR/sys" "$IR/run" "$IR/tmp" \
         "$IR/sysroot" "$IR/lib/modules"
cp "$BUSYBOX" "$IR/bin/busybox"
ln -s busybox "$IR/bin/sh"
install -m 0755 "$HERE/initramfs/init" "$IR/init"
cp -R "$KTREE" "$IR/lib/modules/$KVER"
chmod -R u=rwX,go=rX "$IR"
chmod 0755 "$IR/bin/busybox" "$IR/init"
# Sorted names, fixed mtimes and owner: byte-identical output on every run.
find "$IR" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$IR" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
    | cpio --quiet --null --create --format=newc --reproducible --owner=0:0) \
    | gzip -9 -n > "$WORK/initramfs.img"

# --- 4. RPMs -------------------------------------------------------------------

TOP=$WORK/rpmbuild
mkdir -p "$TOP/SOURCES" "$TOP/tmp" "$WORK/home"
cp "$BUSYBOX" "$TOP/SOURCES/busybox"
cp -R "$KTREE" "$TOP/SOURCES/modules-$KVER"
install -m 0644 "$VMLINUZ" "$TOP/SOURCES/modules-$KVER/vmlinuz"
install -m 0644 "$WORK/initramfs.img" "$TOP/SOURCES/modules-$KVER/initramfs.img"
find "$TOP/SOURCES" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

RPMBUILD_ARGS=(
    --define "_topdir $TOP"
    --define "_tmppath $TOP/tmp"
    --define "kver $KVER"
    # The payloads are prebuilt binaries: no stripping, no debuginfo, no
    # /usr/lib/.build-id links, no brp-* rewriting.
    --define "__os_install_post %{nil}"
    --define "debug_package %{nil}"
    --define "_build_id_links none"
    # Reproducible RPMs: build time and file mtimes from SOURCE_DATE_EPOCH.
    --define "use_source_date_epoch_as_buildtime 1"
    --define "clamp_mtime_to_source_date_epoch 1"
    --define "_buildhost example-os-builder"
)
for spec in "$HERE"/rpms/*.spec; do
    name=$(basename "$spec" .spec)
    rel=${BUMP[$name]:-1}
    # HOME points at an empty scratch dir so a user's ~/.rpmmacros cannot
    # change the result, and nothing is written to the real $HOME.
    if ! HOME=$WORK/home rpmbuild -bb --quiet "${RPMBUILD_ARGS[@]}" \
            --define "example_release $rel" "$spec" > "$WORK/rpmbuild-$name.log" 2>&1; then
        cat "$WORK/rpmbuild-$name.log" >&2
        die "rpmbuild failed for $name"
    fi
done

# --- 5. The repository -----------------------------------------------------------

rm -rf "$OUTDIR/Packages" "$OUTDIR/repodata" "$OUTDIR/.repodata"
mkdir -p "$OUTDIR/Packages"
find "$TOP/RPMS" -name '*.rpm' -exec cp {} "$OUTDIR/Packages/" \;
createrepo_c --quiet --revision "$SOURCE_DATE_EPOCH" --set-timestamp-to-revision "$OUTDIR" >/dev/null

info "kernel: $KPKG ($KVER)"
for rpm in "$OUTDIR"/Packages/*.rpm; do info "built ${rpm#"$OUTDIR"/}"; done
info "repository ready: $OUTDIR"
