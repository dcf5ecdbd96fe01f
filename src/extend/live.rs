//! `--platform live`: the live ISO and the PXE kernel, initramfs and rootfs, as
//! coreos-assembler's live artifacts are laid out:
//!
//! ```text
//! ISO (volume ID <name>-<build>, at most 32 characters)
//!   images/pxeboot/vmlinuz       the kernel               = live-kernel
//!   images/pxeboot/initrd.img    the initramfs            = live-initramfs
//!   images/pxeboot/rootfs.img    cpio holding root.squashfs (or root.erofs) = live-rootfs
//!   images/efiboot.img           FAT image with EFI/BOOT/BOOT<ARCH>.EFI (GRUB)
//!   boot/grub2/grub.cfg          the menu; boot/grub2/i386-pc/eltorito.img (BIOS GRUB)
//! ```
//!
//! The root filesystem image is the deployed sysroot (what the metal disk's `root`
//! partition holds: the OSTree repository and the deployment), deployed from the
//! build's commit exactly as `cosa-image` deploys it, squashed with `mksquashfs`
//! (zstd) or `mkfs.erofs` (lz4hc). CoreOS's `rootfs.img` format, a cpio archive
//! holding it, lets PXE users append it to the initramfs.
//!
//! Booting: BIOS through GRUB's El Torito image (and `boot_hybrid.img` in the MBR,
//! so the ISO also boots when written to a USB disk), UEFI through the ESP image
//! (`-efi-boot-part` makes it a partition too). Both GRUBs find the ISO by its volume
//! ID and read `/boot/grub2/grub.cfg`, whose kernel arguments are:
//! image.yaml's `extra-kargs`, `coreos.liveiso=<volume ID>`,
//! `cosa.live-rootfs=/images/pxeboot/rootfs.img`, `ignition.firstboot`,
//! `ignition.platform.id=metal` (the ID CoreOS's docs give for ISO and PXE) and the
//! metal platform's console arguments.

use std::process::Command;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};

use super::archive;
use super::derive::{PlatformsJson, platform_boot};
use crate::cmd::CommandRunExt;
use crate::image::config::ImageConfig;
use crate::image::deploy::{self, DeployOptions};
use crate::image::grub::{self, GrubSource};
use crate::image::layout;
use crate::image::privilege::AsRoot;
use crate::meta::Meta;

/// Where the rootfs is inside the ISO (the example initramfs's default, CoreOS's path).
pub const ISO_ROOTFS: &str = "/images/pxeboot/rootfs.img";
pub const ISO_KERNEL: &str = "/images/pxeboot/vmlinuz";
pub const ISO_INITRD: &str = "/images/pxeboot/initrd.img";
const ISO_EFIBOOT: &str = "images/efiboot.img";
const ISO_ELTORITO: &str = "boot/grub2/i386-pc/eltorito.img";
const ISO_GRUB_CFG: &str = "boot/grub2/grub.cfg";
/// ISO 9660 volume IDs are at most 32 characters.
pub const MAX_LABEL: usize = 32;

/// Modules embedded in both live GRUB images.
const GRUB_MODULES: &[&str] = &[
    "iso9660",
    "part_msdos",
    "part_gpt",
    "fat",
    "search",
    "search_label",
    "normal",
    "linux",
    "configfile",
    "echo",
    "serial",
    "terminal",
    "test",
    "gzio",
];

/// The live root filesystem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RootfsType {
    Squashfs,
    Erofs,
}

impl RootfsType {
    pub fn member(self) -> &'static str {
        match self {
            RootfsType::Squashfs => "root.squashfs",
            RootfsType::Erofs => "root.erofs",
        }
    }
}

/// The ISO volume ID: `<name>-<build>`, characters outside `[A-Za-z0-9._-]` as `_`,
/// cut to 32 characters.
pub fn iso_label(name: &str, build: &str) -> String {
    let s: String = format!("{name}-{build}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.chars().take(MAX_LABEL).collect()
}

/// The live kernel arguments.
pub fn live_kargs(cfg: &ImageConfig, label: &str, platform_kargs: &[String]) -> Vec<String> {
    let mut k: Vec<String> = cfg.extra_kargs.clone();
    k.push(format!("coreos.liveiso={label}"));
    k.push(format!("cosa.live-rootfs={ISO_ROOTFS}"));
    k.push("ignition.firstboot".into());
    k.push("ignition.platform.id=metal".into());
    k.extend(platform_kargs.iter().cloned());
    k
}

/// The ISO's grub.cfg.
pub fn grub_cfg(title: &str, kargs: &[String], console: &[String]) -> Result<String> {
    let entry = crate::image::bls::BlsEntry::parse(
        "live.conf",
        &format!(
            "title {title}\noptions {}\nlinux {ISO_KERNEL}\ninitrd {ISO_INITRD}\n",
            kargs.join(" ")
        ),
        "live menu entry",
    )?;
    grub::grub_cfg(&[entry], console)
}

/// Everything the live job needs.
pub struct LiveInputs<'a> {
    pub meta: &'a Meta,
    pub arch: &'a str,
    pub cfg: &'a ImageConfig,
    pub pj: Option<&'a PlatformsJson>,
    pub repo: &'a Utf8Path,
    pub asroot: AsRoot,
    pub fstype: RootfsType,
    pub mtime: u64,
}

/// The four files, made in `scratch` and written to the given outputs.
pub struct LiveOutputs<'a> {
    pub iso: &'a Utf8Path,
    pub kernel: &'a Utf8Path,
    pub initramfs: &'a Utf8Path,
    pub rootfs: &'a Utf8Path,
}

/// Required tools for the live artifacts.
pub fn check_tools(fstype: RootfsType, asroot: AsRoot) -> Result<()> {
    let mut tools = vec![
        ("ostree", "ostree"),
        ("xorriso", "xorriso"),
        ("grub-mkimage", "grub-common"),
        ("mkfs.fat", "dosfstools"),
        ("mcopy", "mtools"),
    ];
    tools.push(match fstype {
        RootfsType::Squashfs => ("mksquashfs", "squashfs-tools"),
        RootfsType::Erofs => ("mkfs.erofs", "erofs-utils"),
    });
    if asroot == AsRoot::UserNs {
        tools.push(("unshare", "util-linux"));
    }
    for (t, pkg) in tools {
        if !crate::cmd::have(t) {
            bail!("{t} not found on PATH (Debian/Ubuntu package: {pkg})");
        }
    }
    Ok(())
}

fn grub_mkimage(
    gs: &GrubSource,
    target: &str,
    extra: &[&str],
    early: &Utf8Path,
    out: &Utf8Path,
) -> Result<()> {
    let dir = gs.dir.join(target.trim_end_matches("-eltorito"));
    let mut mods: Vec<&str> = GRUB_MODULES.to_vec();
    mods.extend(extra);
    for m in &mods {
        let p = dir.join(format!("{m}.mod"));
        if !p.is_file() {
            bail!("GRUB module {m} missing: {p} does not exist");
        }
    }
    Command::new("grub-mkimage")
        .arg("-O")
        .arg(target)
        .arg("-d")
        .arg(&dir)
        .arg("-o")
        .arg(out)
        .arg("-c")
        .arg(early)
        .arg("-p")
        .arg("/boot/grub2")
        .args(&mods)
        .run()
        .with_context(|| format!("making the {target} GRUB image"))
}

/// Make the live artifacts.
pub fn make(i: &LiveInputs<'_>, out: &LiveOutputs<'_>, scratch: &Utf8Path) -> Result<()> {
    let meta = i.meta;
    let id = &meta.buildid;
    // 1. Deploy, as cosa-image does.
    let refspec = meta
        .ostree_ref
        .as_ref()
        .map(|r| match &i.cfg.ostree_remote {
            Some(remote) => format!("{remote}:{r}"),
            None => r.clone(),
        });
    let mut kargs = vec!["rw".to_string()];
    kargs.extend(i.cfg.extra_kargs.iter().cloned());
    kargs.push(format!("root=LABEL={}", layout::ROOT_FS_LABEL));
    let sysroot = scratch.join("sysroot");
    let deployed = deploy::deploy(
        i.asroot,
        &sysroot,
        &DeployOptions {
            osname: meta.name.clone(),
            commit: meta.ostree_commit.clone(),
            refspec,
            kargs,
            source_repo: i.repo.to_path_buf(),
        },
    )?;
    let boot = scratch.join("boot");
    deploy::split_boot(&sysroot, &boot)?;
    let entries = grub::read_entries(&boot)?;
    let e = entries.first().context("no BLS entry")?;
    let rel = |p: &str| boot.join(p.trim_start_matches('/'));
    let kernel = rel(e.get("linux").context("BLS entry without linux")?);
    let initrds = e.get_all("initrd");
    if initrds.len() != 1 {
        bail!(
            "the deployment's BLS entry has {} initrd lines; the live image needs exactly one",
            initrds.len()
        );
    }
    let initramfs = rel(initrds[0]);

    // 2. The root filesystem image, then CoreOS's rootfs.img (a cpio holding it).
    let squash = scratch.join(i.fstype.member());
    let argv: Vec<String> = match i.fstype {
        RootfsType::Squashfs => vec![
            "mksquashfs".into(),
            sysroot.to_string(),
            squash.to_string(),
            "-comp".into(),
            "zstd".into(),
            "-noappend".into(),
            "-no-progress".into(),
            "-quiet".into(),
        ],
        RootfsType::Erofs => vec![
            "mkfs.erofs".into(),
            "-zlz4hc".into(),
            squash.to_string(),
            sysroot.to_string(),
        ],
    };
    i.asroot
        .command(&argv)?
        .run()
        .with_context(|| format!("making the live root filesystem from {sysroot}"))?;
    let size = std::fs::metadata(&squash)
        .with_context(|| format!("reading {squash}"))?
        .len();
    {
        let mut src = std::fs::File::open(&squash).with_context(|| format!("opening {squash}"))?;
        let f = std::fs::File::create(out.rootfs)
            .with_context(|| format!("creating {}", out.rootfs))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &f);
        archive::cpio_one_file(&mut w, i.fstype.member(), 0o644, i.mtime, size, &mut src)
            .and_then(|()| std::io::Write::flush(&mut w).map_err(Into::into))
            .with_context(|| format!("writing {}", out.rootfs))
            .map_err(|e| super::derive::explain_full(e, out.rootfs))?;
    }
    std::fs::remove_file(&squash).with_context(|| format!("removing {squash}"))?;
    for (src, dst) in [(&kernel, out.kernel), (&initramfs, out.initramfs)] {
        std::fs::copy(src, dst).with_context(|| format!("copying {src} to {dst}"))?;
    }

    // 3. GRUB for the ISO.
    let label = iso_label(&meta.name, id);
    let gs = GrubSource::find(&deployed.deployment, i.arch)?;
    let early = scratch.join("early.cfg");
    std::fs::write(
        &early,
        format!("search --no-floppy --set=root --label '{label}'\nset prefix=($root)/boot/grub2\n"),
    )
    .with_context(|| format!("writing {early}"))?;
    let (efi_target, efi_name) = grub::efi_target(i.arch)?;
    let efi = scratch.join(efi_name);
    let efi_extra: &[&str] = if i.arch == "x86_64" {
        &["efi_gop"]
    } else {
        &[]
    };
    grub_mkimage(&gs, efi_target, efi_extra, &early, &efi)?;
    let efi_size = std::fs::metadata(&efi)
        .with_context(|| format!("reading {efi}"))?
        .len();
    let esp_size = (efi_size + (2 << 20)).div_ceil(1 << 20) * (1 << 20);
    let efiboot = scratch.join("efiboot.img");
    let efi_dest = format!("EFI/BOOT/{efi_name}");
    crate::image::disk::make_esp(
        &efiboot,
        esp_size,
        512,
        layout::ESP_LABEL,
        layout::ESP_VOLID,
        &[(&efi, efi_dest.as_str())],
    )?;
    let bios = match grub::bios_target(i.arch) {
        Some(t) => {
            let img = scratch.join("eltorito.img");
            grub_mkimage(&gs, &format!("{t}-eltorito"), &["biosdisk"], &early, &img)?;
            let hybrid = gs.dir.join(t).join("boot_hybrid.img");
            if !hybrid.is_file() {
                bail!("{hybrid} does not exist (GRUB's BIOS boot_hybrid.img)");
            }
            Some((img, hybrid))
        }
        None => None,
    };
    let (pk, _) = platform_boot(i.pj, i.arch, "metal");
    let console: Vec<String> = grub::DEFAULT_CONSOLE
        .iter()
        .map(|s| s.to_string())
        .collect();
    let title = format!("{} {} (live)", meta.name, meta.ostree_version);
    let cfg_text = grub_cfg(&title, &live_kargs(i.cfg, &label, &pk), &console)?;
    let grub_cfg_path = scratch.join("grub.cfg");
    std::fs::write(&grub_cfg_path, cfg_text).with_context(|| format!("writing {grub_cfg_path}"))?;

    // 4. The ISO.
    let mut x = Command::new("xorriso");
    x.args(["-as", "mkisofs", "-o"]).arg(out.iso).args([
        "-V",
        &label,
        "-r",
        "-J",
        "-joliet-long",
        "-graft-points",
    ]);
    x.arg(format!(
        "--modification-date={}",
        chrono::DateTime::from_timestamp(i64::try_from(i.mtime).unwrap_or(0), 0)
            .unwrap_or_default()
            .format("%Y%m%d%H%M%S00")
    ));
    if let Some((_, hybrid)) = &bios {
        x.args(["-b", ISO_ELTORITO, "-no-emul-boot", "-boot-load-size", "4"])
            .args(["-boot-info-table", "--grub2-boot-info", "--grub2-mbr"])
            .arg(hybrid);
    }
    x.args([
        "--efi-boot",
        ISO_EFIBOOT,
        "-efi-boot-part",
        "--efi-boot-image",
    ])
    .arg("--protective-msdos-label");
    let graft =
        |inside: &str, local: &Utf8Path| format!("{}={local}", inside.trim_start_matches('/'));
    for (inside, local) in [
        (ISO_KERNEL, kernel.as_path()),
        (ISO_INITRD, initramfs.as_path()),
        (ISO_ROOTFS, out.rootfs),
        (ISO_EFIBOOT, efiboot.as_path()),
        (ISO_GRUB_CFG, grub_cfg_path.as_path()),
    ] {
        check_graft_path(local)?;
        x.arg(graft(inside, local));
    }
    if let Some((img, _)) = &bios {
        check_graft_path(img)?;
        x.arg(graft(ISO_ELTORITO, img));
    }
    x.run()
        .with_context(|| format!("making the live ISO {}", out.iso))
        .map_err(|e| super::derive::explain_full(e, out.iso))?;
    Ok(())
}

/// xorriso graft points use `=` and `\` specially.
fn check_graft_path(p: &Utf8Path) -> Result<()> {
    if p.as_str().contains(['=', '\\']) {
        bail!("{p}: xorriso cannot take a path with '=' or '\\' as a graft point");
    }
    Ok(())
}

/// Deploy scratch needs the namespace's root to be removed when not root.
pub fn remove_scratch(asroot: AsRoot, dir: &Utf8PathBuf) -> Result<()> {
    asroot.remove_tree(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(
            iso_label("example-os", "1.20240101.0"),
            "example-os-1.20240101.0"
        );
        let l = iso_label("fedora-coreos", "43.20260411.20.dev0-with-a-long-suffix");
        assert_eq!(l.len(), MAX_LABEL);
        assert_eq!(iso_label("a b", "1"), "a_b-1");
    }

    #[test]
    fn kargs_and_menu() {
        let cfg = ImageConfig {
            extra_kargs: vec!["console=ttyS0".into()],
            ..Default::default()
        };
        let k = live_kargs(&cfg, "L", &[]);
        assert_eq!(
            k,
            [
                "console=ttyS0",
                "coreos.liveiso=L",
                "cosa.live-rootfs=/images/pxeboot/rootfs.img",
                "ignition.firstboot",
                "ignition.platform.id=metal"
            ]
        );
        let g = grub_cfg("X 1 (live)", &k, &[]).unwrap();
        assert!(
            g.contains("linux /images/pxeboot/vmlinuz console=ttyS0 coreos.liveiso=L"),
            "{g}"
        );
        assert!(g.contains("initrd /images/pxeboot/initrd.img"), "{g}");
    }
}
