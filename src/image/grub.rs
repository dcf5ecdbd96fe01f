//! GRUB for BIOS and UEFI, installed without `grub-install` (which wants a block
//! device and refuses image files).
//!
//! - The modules and images come from the composed tree when it ships them
//!   (`/usr/lib/grub/<target>/`), else from the build host (`/usr/lib/grub`).
//! - Both GRUB images embed the same early config: find the filesystem labelled `boot`
//!   and read `/grub2/grub.cfg` from it (where CoreOS keeps it).
//! - grub.cfg is generated from the BLS entries, because GRUB builds without the
//!   `blscfg` module (Debian's) cannot read them. Kernel arguments therefore exist in
//!   two places on the boot filesystem, the BLS `options` line and grub.cfg; both are
//!   written by [`write_boot_config`], which is what a later step that changes kernel
//!   arguments should call (or mirror) too.
//! - BIOS: what `grub-bios-setup` does, in [`install_bios`]: boot.img into the first
//!   440 bytes of the MBR (the partition table stays), pointing at core.img, which goes
//!   into the BIOS-BOOT partition with its block list patched to where it now lives.
//! - UEFI: `grub-mkimage -O <arch>-efi` gives the removable-media path
//!   `EFI/BOOT/BOOT<ARCH>.EFI` on the ESP; no NVRAM entry is needed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::Command;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};

use super::bls::BlsEntry;
use super::layout::BOOT_FS_LABEL;
use crate::cmd::CommandRunExt;

/// Where grub.cfg lives on the boot filesystem (and GRUB's prefix).
pub const GRUB_PREFIX: &str = "/grub2";
/// Modules embedded in every GRUB image (BIOS adds `biosdisk`, UEFI `efi_gop`).
const EMBEDDED: &[&str] = &[
    "part_gpt",
    "ext2",
    "fat",
    "search",
    "search_label",
    "search_fs_uuid",
    "normal",
    "linux",
    "echo",
    "configfile",
    "serial",
    "terminal",
    "test",
    "gzio",
];
/// Seconds the menu waits (CoreOS uses 1).
pub const MENU_TIMEOUT: u32 = 1;
/// Console commands when the tree has no platforms.json entry for the platform.
pub const DEFAULT_CONSOLE: &[&str] = &[
    "serial --unit=0 --speed=115200",
    "terminal_input serial console",
    "terminal_output serial console",
];

/// Where GRUB's modules come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubSource {
    /// The directory holding `<target>/` module directories (`.../usr/lib/grub`).
    pub dir: Utf8PathBuf,
    /// Whether it is the composed tree's (else the host's).
    pub from_tree: bool,
}

/// The GRUB EFI target and the removable-media file name for an arch.
pub fn efi_target(arch: &str) -> Result<(&'static str, &'static str)> {
    Ok(match arch {
        "x86_64" => ("x86_64-efi", "BOOTX64.EFI"),
        "aarch64" => ("arm64-efi", "BOOTAA64.EFI"),
        "riscv64" => ("riscv64-efi", "BOOTRISCV64.EFI"),
        other => bail!("no UEFI GRUB target for arch {other}"),
    })
}

/// The BIOS GRUB target, on the arches that boot with BIOS.
pub fn bios_target(arch: &str) -> Option<&'static str> {
    (arch == "x86_64").then_some("i386-pc")
}

impl GrubSource {
    /// Pick the tree's GRUB if `deployment/usr/lib/grub` has every target `arch`
    /// needs, else the host's; fail if neither has them.
    pub fn find(deployment: &Utf8Path, arch: &str) -> Result<GrubSource> {
        let mut targets = vec![efi_target(arch)?.0];
        targets.extend(bios_target(arch));
        let complete = |dir: &Utf8Path| {
            targets
                .iter()
                .all(|t| dir.join(t).join("moddep.lst").is_file())
        };
        let tree = deployment.join("usr/lib/grub");
        if complete(&tree) {
            return Ok(GrubSource {
                dir: tree,
                from_tree: true,
            });
        }
        let host = Utf8PathBuf::from(
            std::env::var("COSA_GRUB_DIR").unwrap_or_else(|_| "/usr/lib/grub".into()),
        );
        if complete(&host) {
            return Ok(GrubSource {
                dir: host,
                from_tree: false,
            });
        }
        bail!(
            "no GRUB modules for {} in the tree (/usr/lib/grub) nor on this host ({host}); \
             install grub-pc-bin and grub-efi-amd64-bin (x86_64) or grub-efi-arm64-bin (aarch64)",
            targets.join(" and ")
        )
    }

    fn target_dir(&self, target: &str) -> Utf8PathBuf {
        self.dir.join(target)
    }

    fn check_modules(&self, target: &str, mods: &[&str]) -> Result<()> {
        for m in mods {
            let p = self.target_dir(target).join(format!("{m}.mod"));
            if !p.is_file() {
                bail!("GRUB module {m} missing: {p} does not exist");
            }
        }
        Ok(())
    }

    /// Copy a target's modules and lists into `<grub2 dir>/<target>/`, so that GRUB
    /// can load modules beyond the embedded ones at run time.
    pub fn copy_modules(&self, target: &str, grub2_dir: &Utf8Path) -> Result<()> {
        let src = self.target_dir(target);
        let dst = grub2_dir.join(target);
        std::fs::create_dir_all(&dst).with_context(|| format!("creating {dst}"))?;
        let rd = std::fs::read_dir(&src).with_context(|| format!("listing {src}"))?;
        for ent in rd {
            let ent = ent.with_context(|| format!("listing {src}"))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".mod") || name.ends_with(".lst") {
                let from = src.join(name.as_ref());
                std::fs::copy(&from, dst.join(name.as_ref()))
                    .with_context(|| format!("copying {from} to {dst}"))?;
            }
        }
        Ok(())
    }

    /// Make the BIOS core.img at `out`.
    pub fn mkimage_bios(&self, early_cfg: &Utf8Path, out: &Utf8Path) -> Result<()> {
        let t = "i386-pc";
        let mut mods = vec!["biosdisk"];
        mods.extend(EMBEDDED);
        self.mkimage(t, &mods, early_cfg, out)
    }

    /// Make the UEFI GRUB executable at `out`.
    pub fn mkimage_efi(&self, arch: &str, early_cfg: &Utf8Path, out: &Utf8Path) -> Result<()> {
        let (t, _) = efi_target(arch)?;
        let mut mods: Vec<&str> = EMBEDDED.to_vec();
        if arch == "x86_64" {
            mods.push("efi_gop");
        }
        self.mkimage(t, &mods, early_cfg, out)
    }

    fn mkimage(&self, target: &str, mods: &[&str], early: &Utf8Path, out: &Utf8Path) -> Result<()> {
        self.check_modules(target, mods)?;
        Command::new("grub-mkimage")
            .arg("-O")
            .arg(target)
            .arg("-d")
            .arg(self.target_dir(target))
            .arg("-o")
            .arg(out)
            .arg("-c")
            .arg(early)
            .arg("-p")
            .arg(GRUB_PREFIX)
            .args(mods)
            .run()
    }

    /// The BIOS boot.img (one 512-byte sector).
    pub fn boot_img(&self) -> Result<Vec<u8>> {
        let p = self.target_dir("i386-pc").join("boot.img");
        let b = std::fs::read(&p).with_context(|| format!("reading {p}"))?;
        if b.len() != 512 {
            bail!("{p}: {} bytes, expected 512", b.len());
        }
        Ok(b)
    }
}

/// The config embedded in the GRUB images: find `boot`, then read its grub.cfg.
pub fn early_cfg() -> String {
    format!(
        "search --no-floppy --label {BOOT_FS_LABEL} --set root\nset prefix=($root){GRUB_PREFIX}\n"
    )
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Characters that GRUB would interpret in a `linux` line.
fn check_grub_word(w: &str, what: &str) -> Result<()> {
    if w.chars()
        .any(|c| matches!(c, '\'' | '"' | '\\' | '$' | ';' | '{' | '}' | '\n' | '\r'))
    {
        bail!(
            "{what} {w:?} contains a character GRUB would interpret (quote, '\\', '$', ';', brace)"
        );
    }
    Ok(())
}

/// grub.cfg for `entries` (newest first, as GRUB boots the first by default).
pub fn grub_cfg(entries: &[BlsEntry], console: &[String]) -> Result<String> {
    let mut s = String::new();
    s.push_str("# Generated by cosa-image from the BLS entries in /loader/entries (this GRUB\n");
    s.push_str("# has no blscfg). Kernel arguments come from their `options` lines.\n");
    for c in console {
        s.push_str(c);
        s.push('\n');
    }
    s.push_str(&format!("set timeout={MENU_TIMEOUT}\nset default=0\n"));
    for e in entries {
        let linux = e
            .get("linux")
            .with_context(|| format!("{}: no linux line", e.file_name))?;
        check_grub_word(linux, "linux path")?;
        let kargs = e.kargs();
        for k in &kargs {
            check_grub_word(k, "kernel argument")?;
        }
        s.push_str(&format!(
            "menuentry {} --id {} {{\n",
            quote(e.title()),
            quote(e.file_name.trim_end_matches(".conf"))
        ));
        s.push_str(&format!(
            "  echo {}\n",
            quote(&format!("Loading {}", e.title()))
        ));
        s.push_str(&format!("  linux {linux} {}\n", kargs.join(" ")));
        let initrds = e.get_all("initrd");
        for i in &initrds {
            check_grub_word(i, "initrd path")?;
        }
        if !initrds.is_empty() {
            s.push_str(&format!("  initrd {}\n", initrds.join(" ")));
        }
        s.push_str("}\n");
    }
    Ok(s)
}

/// Read every BLS entry under `<boot>/loader/entries`, newest first.
pub fn read_entries(boot: &Utf8Path) -> Result<Vec<BlsEntry>> {
    let dir = boot.join("loader/entries");
    let mut out = Vec::new();
    let rd = std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))?;
    for ent in rd {
        let ent = ent.with_context(|| format!("listing {dir}"))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".conf") {
            continue;
        }
        let p = dir.join(&name);
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
        out.push(BlsEntry::parse(&name, &text, p.as_str())?);
    }
    if out.is_empty() {
        bail!("{dir}: no BLS entries (did the deployment fail?)");
    }
    out.sort_by(|a, b| {
        b.version()
            .cmp(&a.version())
            .then(a.file_name.cmp(&b.file_name))
    });
    Ok(out)
}

/// Write the BLS entries and the grub.cfg made from them into a boot directory.
pub fn write_boot_config(boot: &Utf8Path, entries: &[BlsEntry], console: &[String]) -> Result<()> {
    let dir = boot.join("loader/entries");
    for e in entries {
        let p = dir.join(&e.file_name);
        std::fs::write(&p, e.to_text()).with_context(|| format!("writing {p}"))?;
    }
    let g = boot.join("grub2");
    std::fs::create_dir_all(&g).with_context(|| format!("creating {g}"))?;
    let p = g.join("grub.cfg");
    std::fs::write(&p, grub_cfg(entries, console)?).with_context(|| format!("writing {p}"))?;
    Ok(())
}

// Offsets in boot.img and diskboot.img (grub-core/boot/i386/pc/boot.S, diskboot.S).
const BOOT_KERNEL_SECTOR: usize = 0x5c;
const BOOT_BOOT_DRIVE: usize = 0x64;
const BOOT_DRIVE_CHECK: usize = 0x66;
const BOOT_BPB_START: usize = 0x3;
const BOOT_BPB_END: usize = 0x5a;
/// End of the MBR boot code; the disk signature and partition table follow.
const MBR_CODE_END: usize = 440;
/// The block list at the end of diskboot.img: start sector (u64), length (u16), segment (u16).
const DISKBOOT_BLOCKLIST: usize = 0x200 - 12;

/// Install GRUB for BIOS on a disk image with 512-byte sectors: boot.img into the MBR
/// (keeping its partition table), core.img at `core_offset` (the BIOS-BOOT partition,
/// `core_room` bytes long).
pub fn install_bios(
    disk: &File,
    disk_path: &Utf8Path,
    boot_img: &[u8],
    core_img: &[u8],
    core_offset: u64,
    core_room: u64,
) -> Result<()> {
    const SECTOR: u64 = 512;
    if core_img.len() < 512 || core_img.len() as u64 > core_room {
        bail!(
            "GRUB core.img is {} bytes; the BIOS-BOOT partition holds {core_room}",
            core_img.len()
        );
    }
    if !core_offset.is_multiple_of(SECTOR) {
        bail!("BIOS-BOOT partition not sector-aligned");
    }
    let core_lba = core_offset / SECTOR;
    let mut mbr = vec![0u8; 512];
    disk.read_exact_at(&mut mbr, 0)
        .with_context(|| format!("reading the MBR of {disk_path}"))?;
    let mut boot = boot_img.to_vec();
    boot[BOOT_BPB_START..BOOT_BPB_END].copy_from_slice(&mbr[BOOT_BPB_START..BOOT_BPB_END]);
    boot[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    boot[BOOT_BOOT_DRIVE] = 0xff;
    // A hard disk: replace the "is this a floppy?" drive check with NOPs, as
    // grub-bios-setup does.
    boot[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);

    let mut core = core_img.to_vec();
    let sectors = core.len().div_ceil(512);
    let rest = u16::try_from(sectors - 1).context("GRUB core.img too large for one block list")?;
    let bl = DISKBOOT_BLOCKLIST;
    core[bl..bl + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[bl + 8..bl + 10].copy_from_slice(&rest.to_le_bytes());
    let seg = u16::from_le_bytes([core[bl + 10], core[bl + 11]]);
    if seg == 0 {
        bail!("GRUB core.img has no load segment in its block list (not an i386-pc core.img?)");
    }
    disk.write_all_at(&boot[..MBR_CODE_END], 0)
        .with_context(|| format!("writing GRUB boot.img into {disk_path}"))?;
    disk.write_all_at(&core, core_offset)
        .with_context(|| format!("writing GRUB core.img into {disk_path}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_from_bls() {
        let e = BlsEntry::parse(
            "ostree-1-e.conf",
            "title E 1 (ostree:0)\nversion 1\noptions rw ostree=/ostree/boot.1/e/a/0\nlinux /ostree/e-a/vmlinuz\ninitrd /ostree/e-a/initramfs.img\n",
            "t",
        )
        .unwrap();
        let c = grub_cfg(std::slice::from_ref(&e), &["serial".to_string()]).unwrap();
        assert!(
            c.contains("menuentry 'E 1 (ostree:0)' --id 'ostree-1-e' {\n"),
            "{c}"
        );
        assert!(
            c.contains("  linux /ostree/e-a/vmlinuz rw ostree=/ostree/boot.1/e/a/0\n"),
            "{c}"
        );
        assert!(c.contains("  initrd /ostree/e-a/initramfs.img\n"), "{c}");
        let mut bad = e;
        bad.set_kargs(&["a=$(x)".to_string()]);
        assert!(grub_cfg(&[bad], &[]).is_err());
    }

    #[test]
    fn bios_install_patches_like_grub_bios_setup() {
        let td = tempfile::tempdir().unwrap();
        let p = Utf8PathBuf::from_path_buf(td.path().join("d")).unwrap();
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(4 << 20).unwrap();
        let mut mbr = vec![0u8; 512];
        mbr[446] = 0x00;
        mbr[450] = 0xEE;
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        f.write_all_at(&mbr, 0).unwrap();
        let boot = vec![0xAAu8; 512];
        let mut core = vec![0x11u8; 512 * 3 + 100];
        core[DISKBOOT_BLOCKLIST + 10..DISKBOOT_BLOCKLIST + 12]
            .copy_from_slice(&0x820u16.to_le_bytes());
        install_bios(&f, &p, &boot, &core, 1 << 20, 1 << 20).unwrap();
        let mut d = vec![0u8; 512];
        f.read_exact_at(&mut d, 0).unwrap();
        assert_eq!(
            &d[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8],
            &2048u64.to_le_bytes()
        );
        assert_eq!(d[450], 0xEE, "partition table kept");
        assert_eq!(&d[510..512], &[0x55, 0xAA]);
        assert_eq!(&d[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2], &[0x90, 0x90]);
        f.read_exact_at(&mut d, 1 << 20).unwrap();
        assert_eq!(
            &d[DISKBOOT_BLOCKLIST..DISKBOOT_BLOCKLIST + 8],
            &2049u64.to_le_bytes()
        );
        assert_eq!(
            &d[DISKBOOT_BLOCKLIST + 8..DISKBOOT_BLOCKLIST + 10],
            &3u16.to_le_bytes()
        );
        assert!(install_bios(&f, &p, &boot, &core, 1 << 20, 1024).is_err());
    }
}
