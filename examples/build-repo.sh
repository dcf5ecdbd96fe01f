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
#
# Exit status: 0 on success, 2 for usage errors, 97 for any other failure
# (always reported by a last line "build-repo.sh: error: ...").
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

# tool:Debian package providing it
for tool in rpmbuild:rpm createrepo_c:createrepo-c apt-get:apt apt-cache:apt dpkg-deb:dpkg \
            cpio:cpio gzip:gzip flock:util-linux; do
    command -v "${tool%%:*}" >/dev/null || die "'${tool%%:*}' not found (apt-get install ${tool#*:})"
done
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (apt-get install busybox-static)"
# The initramfs and the OS have no libc: a dynamically linked busybox would not run.
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; install busybox-static or set EXAMPLE_BUSYBOX"
fi

mkdir -p "$OUTDIR" "$CACHE/debs"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cosa-example-build.XXXXXX")
KTMP=
trap 'rm -rf "$WORK" ${KTMP:+"$KTMP"}' EXIT

# --- 1. Kernel packages from the host distribution ---------------------------

# Only apt-cache (local package lists, no network) is used to decide what to
# fetch, so a warm cache makes the whole build offline.
# apt-cache is slow here (about 0.6 s a call, Debian images often disable its
# on-disk cache), so ask about all candidate metapackages in one call; it
# prints one block per package it knows, in argument order.
if [ -n "${EXAMPLE_KERNEL_META:-}" ]; then
    METAS=("$EXAMPLE_KERNEL_META")
else
    # Debian first (small kernel aimed at VMs), then Ubuntu.
    METAS=(linux-image-cloud-amd64 linux-image-generic)
fi
META_DEPS=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
                --no-replaces --no-enhances "${METAS[@]}" 2>/dev/null) || true
# "<meta>" lines start a block; the first "Depends: linux-image-<kver>" wins.
read -r META KPKG < <(awk '/^[^ ]/ {meta=$1}
    $1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print meta, $2; exit}' <<<"$META_DEPS") || true
[ -n "${KPKG:-}" ] \
    || die "apt knows no kernel metapackage (${METAS[*]}) with a linux-image-<kver> dependency; run apt-get update"
KVER=${KPKG#linux-image-}
KPKGS=("$KPKG")
# Ubuntu ships the modules separately in linux-modules-<kver>; Debian does not
# (skip the extra apt-cache call there).
if [ "$META" != linux-image-cloud-amd64 ] \
        && apt-cache show --no-all-versions "linux-modules-$KVER" >/dev/null 2>&1; then
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

# Tests may run several builds at once with the same cache: serialise
# everything that reads or writes it (released once the kernel files are
# copied into the scratch dir).
exec 9>"$CACHE/.lock"
flock 9

DEBS=()
for pkg in "${KPKGS[@]}"; do
    fetch_deb "$pkg"
    DEBS+=("$DEB")
done

# --- 2. Kernel image and the modules the initramfs needs ---------------------

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

# prepare_kernel DIR: extract the kernel packages and fill DIR with
#   vmlinuz
#   modules/   the future /usr/lib/modules/<kver> minus vmlinuz/initramfs.img:
#              the selected modules (uncompressed), load-order, modules.dep,
#              modules.builtin
prepare_kernel() {
    local out=$1 kx=$WORK/kernel-extract deb f d rel n m line deps
    mkdir -p "$kx" "$out/modules"
    for deb in "${DEBS[@]}"; do dpkg-deb -x "$deb" "$kx"; done

    local vmlinuz= srcmod=
    for f in "$kx/boot/vmlinuz-$KVER" "$kx/usr/lib/modules/$KVER/vmlinuz" "$kx/lib/modules/$KVER/vmlinuz"; do
        [ -f "$f" ] && { vmlinuz=$f; break; }
    done
    [ -n "$vmlinuz" ] || die "no vmlinuz for $KVER in ${KPKGS[*]}"
    # Ubuntu installs it mode 0600; the RPM spec sets the final mode anyway.
    install -m 0644 "$vmlinuz" "$out/vmlinuz"
    for d in "$kx/lib/modules/$KVER" "$kx/usr/lib/modules/$KVER"; do
        [ -d "$d/kernel" ] && { srcmod=$d; break; }
    done
    [ -n "$srcmod" ] || die "no modules directory for $KVER in ${KPKGS[*]}"

    # Module name -> path relative to the modules dir. The kernel treats - and
    # _ in module names as the same character.
    local -A modpath=() builtin=() seen=() deps_of=()
    while IFS= read -r rel; do
        n=${rel##*/}; n=${n%%.ko*}; n=${n//-/_}
        modpath[$n]=$rel
    done < <(cd "$srcmod" && find kernel -name '*.ko*' | LC_ALL=C sort)
    if [ -f "$srcmod/modules.builtin" ]; then
        while IFS= read -r rel; do
            n=${rel##*/}; n=${n%%.ko*}; n=${n//-/_}
            builtin[$n]=1
        done < "$srcmod/modules.builtin"
        cp "$srcmod/modules.builtin" "$out/modules/"
    fi

    # Depth-first walk; a module is appended after all its dependencies.
    # Dependencies come from the module's own .modinfo section (NUL-separated
    # key=value strings), the same data depmod reads; this avoids needing
    # kmod's depmod/modinfo on the build host.
    local order=()
    visit() {
        local n=${1//-/_} d
        [ -z "${seen[$n]:-}" ] || return 0
        seen[$n]=1
        if [ -z "${modpath[$n]:-}" ]; then
            [ -n "${builtin[$n]:-}" ] || info "warning: kernel $KVER has no module or built-in '$n'; skipped"
            return 0
        fi
        deps_of[$n]=$(ko_cat "$srcmod/${modpath[$n]}" | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' ')
        for d in ${deps_of[$n]}; do visit "$d"; done
        order+=("$n")
    }
    while read -r line; do
        line=${line%%#*}
        for m in $line; do visit "$m"; done
    done < "$HERE/initramfs/modules.list"

    # Copy uncompressed: busybox insmod cannot read zstd-compressed modules.
    local -A shipped=()
    for n in "${order[@]}"; do
        rel=${modpath[$n]%.ko*}.ko
        mkdir -p "$out/modules/${rel%/*}"
        ko_cat "$srcmod/${modpath[$n]}" > "$out/modules/$rel"
        shipped[$n]=$rel
    done

    # load-order: what /init insmods, in this order. modules.dep: the same
    # information in depmod's format (module: all its dependencies), so a real
    # modprobe works on the installed system too.
    : > "$out/modules/load-order"
    : > "$out/modules/modules.dep"
    for n in "${order[@]}"; do
        echo "${shipped[$n]}" >> "$out/modules/load-order"
        local -A closure=()
        local stack=(${deps_of[$n]}) x
        while [ ${#stack[@]} -gt 0 ]; do
            x=${stack[-1]//-/_}; unset 'stack[-1]'
            [ -n "${shipped[$x]:-}" ] && [ -z "${closure[$x]:-}" ] || continue
            closure[$x]=1
            stack+=(${deps_of[$x]})
        done
        deps=
        for x in "${order[@]}"; do [ -z "${closure[$x]:-}" ] || deps="${shipped[$x]} $deps"; done
        echo "${shipped[$n]}: ${deps% }" >> "$out/modules/modules.dep"
        unset closure
    done
    info "kernel $KVER: ${#order[@]} modules for the initramfs"
    rm -rf "$kx"
}

# Extracting the kernel packages is the slowest step of a warm build, so the
# result is cached, keyed by the .deb files, the module list and this script.
KEY=$( { printf '%s\n' "${DEBS[@]##*/}"; cat "$HERE/initramfs/modules.list" "${BASH_SOURCE[0]}"; } \
       | sha256sum | cut -c1-16)
KCACHE=$CACHE/kernel-$KVER-$KEY
if [ ! -f "$KCACHE/.complete" ]; then
    KTMP=$(mktemp -d "$CACHE/.kernel.XXXXXX")
    prepare_kernel "$KTMP"
    touch "$KTMP/.complete"
    # Drop caches made from other inputs, then publish atomically.
    find "$CACHE" -maxdepth 1 -name 'kernel-*' -exec rm -rf {} +
    mv "$KTMP" "$KCACHE"
    KTMP=
fi
KTREE=$WORK/modules-$KVER
cp -R "$KCACHE/modules" "$KTREE"
cp "$KCACHE/vmlinuz" "$WORK/vmlinuz"
exec 9>&-

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
    | gzip -6 -n > "$WORK/initramfs.img"

# --- 4. RPMs -------------------------------------------------------------------

TOP=$WORK/rpmbuild
mkdir -p "$TOP/SOURCES" "$TOP/tmp" "$WORK/home"
cp "$BUSYBOX" "$TOP/SOURCES/busybox"
cp -R "$KTREE" "$TOP/SOURCES/modules-$KVER"
install -m 0644 "$WORK/vmlinuz" "$TOP/SOURCES/modules-$KVER/vmlinuz"
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
    # Debian defaults to gzip -9, which takes seconds on the mostly
    # incompressible kernel payload for no gain; -6 is the usual default.
    --define "_binary_payload w6.gzdio"
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
# primary.xml records each file's mtime: pin it too.
touch -d "@$SOURCE_DATE_EPOCH" "$OUTDIR"/Packages/*.rpm
createrepo_c --quiet --revision "$SOURCE_DATE_EPOCH" --set-timestamp-to-revision "$OUTDIR" >/dev/null

info "kernel: $KPKG ($KVER)"
for rpm in "$OUTDIR"/Packages/*.rpm; do info "built ${rpm#"$OUTDIR"/}"; done
info "repository ready: $OUTDIR"
