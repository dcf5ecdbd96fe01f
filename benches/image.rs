//! Benchmark: cosa-image on the example OS, side by side in one run with the same
//! primitives run by hand from a shell script (the ostree admin deploy, grub-mkimage,
//! mkfs.fat + mtools, sfdisk, mkfs.ext4 -d at the partition offsets, GRUB's BIOS
//! stages written with python3, qemu-img convert, sha256sum), on the same commit.
//!
//! Run: `cargo bench --bench image`. Prints a Markdown table for BENCHMARKS.md.

use std::process::Command;
use std::time::Duration;

#[path = "common/mod.rs"]
mod common;
use common::*;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;

const RUNS: usize = 5;

/// The by-hand peer for a qemu image: $1 work dir, $2 commit, $3 output qcow2, $4 osname, $5 ref.
const BY_HAND: &str = r#"set -euo pipefail
WD=$1; C=$2; OUT=$3; OS=$4; REF=$5
S=$(mktemp -d "$WD/tmp/by-hand.XXXXXX")
R=$S/sysroot; B=$S/boot; G=/usr/lib/grub
mkdir "$R"
ostree admin init-fs "$R"
ostree admin os-init --sysroot="$R" "$OS"
ostree config --repo="$R/ostree/repo" set sysroot.bootloader none
ostree --repo="$R/ostree/repo" pull-local "$WD/tmp/repo" "$C"
ostree --repo="$R/ostree/repo" refs --create="$REF" "$C"
ostree admin deploy --sysroot="$R" --os="$OS" --karg=rw --karg=console=ttyS0 --karg=root=LABEL=root "$REF"
mkdir "$B"; mv "$R"/boot/* "$B"/; mkdir -p "$B/efi" "$B/grub2/i386-pc" "$B/grub2/x86_64-efi"
E=$(ls "$B"/loader/entries/*.conf)
{ echo 'serial --unit=0 --speed=115200'; echo 'terminal_input serial console'; echo 'terminal_output serial console'
  echo 'set timeout=1'
  printf "menuentry '%s' {\n linux %s %s ignition.platform.id=qemu\n initrd %s\n}\n" \
    "$(sed -n 's/^title //p' "$E")" "$(sed -n 's/^linux //p' "$E")" "$(sed -n 's/^options //p' "$E")" "$(sed -n 's/^initrd //p' "$E")"
} > "$B/grub2/grub.cfg"
cp $G/i386-pc/*.mod $G/i386-pc/*.lst "$B/grub2/i386-pc/"
cp $G/x86_64-efi/*.mod $G/x86_64-efi/*.lst "$B/grub2/x86_64-efi/"
printf 'search --no-floppy --label boot --set root\nset prefix=($root)/grub2\n' > "$S/early.cfg"
MODS="part_gpt ext2 fat search search_label search_fs_uuid normal linux echo configfile serial terminal test gzio"
grub-mkimage -O i386-pc -d $G/i386-pc -o "$S/core.img" -c "$S/early.cfg" -p /grub2 biosdisk $MODS
grub-mkimage -O x86_64-efi -d $G/x86_64-efi -o "$S/BOOTX64.EFI" -c "$S/early.cfg" -p /grub2 $MODS efi_gop
mkfs.fat -n EFI-SYSTEM -i 7B7795E7 -C "$S/esp.img" 130048 >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$S/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$S/esp.img" "$S/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
D=$S/disk.raw
truncate -s 3G "$D"
sfdisk -q --no-reread --no-tell-kernel "$D" <<'EOF'
label: gpt
label-id: 00000000-0000-4000-A000-000000000001
start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name="BIOS-BOOT"
size=260096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI-SYSTEM"
size=786432, type=BC13C2FF-59E6-4262-A352-B275FD6F7172, name="boot"
type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root"
EOF
dd if="$S/esp.img" of="$D" bs=1M seek=2 conv=notrunc,sparse status=none
X=root_owner=0:0,nodiscard,lazy_itable_init=1,lazy_journal_init=1
mkfs.ext4 -q -F -T default -b 4096 -L boot -U 96d15588-3596-4b3c-adca-a2ff7279ea63 -O metadata_csum_seed \
  -d "$B" -E "$X,offset=$((129 << 20))" "$D" 393216k
mkfs.ext4 -q -F -T default -b 4096 -L root -U 910678ff-f77e-4a7d-8d53-86f2ac47a823 \
  -d "$R" -E "$X,offset=$((513 << 20))" "$D" $(( (3072 - 513 - 1) * 1024 ))k
python3 - "$D" "$S/core.img" <<'PY'
import struct, sys
disk, core_path = sys.argv[1], sys.argv[2]
boot = bytearray(open('/usr/lib/grub/i386-pc/boot.img', 'rb').read())
core = bytearray(open(core_path, 'rb').read())
struct.pack_into('<Q', boot, 0x5c, 2048); boot[0x64] = 0xff; boot[0x66:0x68] = b'\x90\x90'
struct.pack_into('<QH', core, 0x200 - 12, 2049, (len(core) + 511) // 512 - 1)
with open(disk, 'r+b') as f:
    f.seek(0); f.write(boot[:440]); f.seek(2048 * 512); f.write(core)
PY
qemu-img convert -f raw -O qcow2 -o compat=1.1 "$D" "$OUT"
sha256sum "$OUT" >/dev/null
chattr -i "$R"/ostree/deploy/*/deploy/*.0 2>/dev/null || true
rm -rf "$S"
"#;

fn main() -> Result<()> {
    let root = Utf8PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let td = tempfile::Builder::new()
        .prefix("cosa-bench-image")
        .tempdir_in("/var/tmp")?;
    let base =
        Utf8PathBuf::from_path_buf(td.path().to_path_buf()).map_err(|_| anyhow::anyhow!("utf8"))?;
    let repo = base.join("repo");
    sh(Command::new(root.join("examples/build-repo.sh")).arg(repo.as_str()))?;
    let wd = base.join("wd");
    sh(Command::new(root.join("examples/init-workdir.sh"))
        .args([wd.as_str(), &format!("file://{repo}")]))?;
    sh(Command::new(env!("CARGO_BIN_EXE_cosa-compose")).args(["--workdir", wd.as_str()]))?;
    let w = cosa::workdir::Workdir::open(wd.clone())?;
    let id = w.latest_id()?.context("no build")?;
    let meta = w.read_meta(&id, "x86_64")?;
    let arch_dir = w.build_arch_dir(&id, "x86_64")?;
    let tree = cosa::image::commit::tree_size(&w.repo_dir(), &meta.ostree_commit)?;

    let exe = env!("CARGO_BIN_EXE_cosa-image");
    let image = |platforms: &str| {
        sh(Command::new(exe).env_remove("GITHUB_OUTPUT").args([
            "--workdir",
            wd.as_str(),
            "--force",
            "--platform",
            platforms,
        ]))
    };
    let userns = !rustix::process::geteuid().is_root();
    let out = base.join("by-hand.qcow2");
    let by_hand = || {
        let mut c = if userns {
            let mut c = Command::new("unshare");
            c.args(["-r", "bash"]);
            c
        } else {
            Command::new("bash")
        };
        sh(c.args(["-c", BY_HAND, "by-hand"]).args([
            wd.as_str(),
            &meta.ostree_commit,
            out.as_str(),
            &meta.name,
            meta.ostree_ref
                .as_deref()
                .unwrap_or("example-os/x86_64/stable"),
        ]))
        .map(|_| ())
    };

    // Warm-up (page cache, first-run costs), then alternate the two.
    image("qemu")?;
    by_hand()?;
    let (mut ours, mut hand, mut metal) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        ours.push(time(|| image("qemu").map(|_| ()))?);
        hand.push(time(by_hand)?);
    }
    for _ in 0..RUNS {
        metal.push(time(|| image("metal,metal4k").map(|_| ()))?);
    }
    let (ours, hand, metal) = (median(ours), median(hand), median(metal));

    let size = |p: &str| -> Result<(u64, u64)> {
        let a = meta_path(&w, &id, p)?;
        let f = arch_dir.join(a);
        Ok((
            std::fs::metadata(&f)?.len(),
            cosa::image::disk::allocated(&f)?,
        ))
    };
    let (q, _) = size("qemu")?;
    let (m, ma) = size("metal")?;
    let (m4, m4a) = size("metal4k")?;
    let hq = std::fs::metadata(&out)?.len();

    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    println!(
        "Example OS ({} files, {} of distinct content), qemu image (3 GiB); median of {RUNS} runs, alternating\n",
        tree.files,
        mib(tree.file_bytes)
    );
    println!("| operation | time | ratio |");
    println!("| --- | --- | --- |");
    println!(
        "| by hand: deploy, grub-mkimage, ESP, sfdisk, mkfs.ext4 -d at offsets, BIOS stages, qemu-img convert, sha256sum (peer) | {} | 1.00× |",
        s(hand)
    );
    println!(
        "| `cosa-image --platform qemu --force` | {} | {:.2}× of by hand |",
        s(ours),
        ours.as_secs_f64() / hand.as_secs_f64()
    );
    println!(
        "| `cosa-image --platform metal,metal4k --force` (one deploy, two disks) | {} | |",
        s(metal)
    );
    println!("\n| image | file size | allocated |");
    println!("| --- | --- | --- |");
    println!("| qemu (qcow2, 3 GiB virtual) | {} | {} |", mib(q), mib(q));
    println!("| qemu by hand (qcow2) | {} | {} |", mib(hq), mib(hq));
    println!("| metal (raw, 512 B sectors) | {} | {} |", mib(m), mib(ma));
    println!(
        "| metal4k (raw, 4096 B sectors) | {} | {} |",
        mib(m4),
        mib(m4a)
    );
    Ok(())
}

fn meta_path(w: &cosa::workdir::Workdir, id: &str, platform: &str) -> Result<String> {
    let m = w.read_meta(id, "x86_64")?;
    Ok(m.images
        .get(platform)
        .with_context(|| format!("no {platform} image"))?
        .path
        .clone())
}
