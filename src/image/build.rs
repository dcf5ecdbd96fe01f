//! Making a build's disk images: the steps of `cosa-image`, in order.
//!
//! 1. Read the build's meta.json; skip platforms already built (unless forced).
//! 2. Make sure `tmp/repo` has the commit (import it from the build's ostree tar).
//! 3. Read the image config stored in the commit (`image.json`), or, for a commit that
//!    has none, the work directory's `src/config/image.yaml`.
//! 4. Size the disk from the commit's tree (coreos-assembler's metal estimate) and fail
//!    early when `size` is too small.
//! 5. Deploy once into a staging sysroot; move its `/boot` out to be the boot filesystem.
//! 6. GRUB: modules, core.img (BIOS) and the EFI executable, the ESP image.
//! 7. Per platform: kernel arguments (`ignition.platform.id`), grub.cfg, a sparse disk
//!    file with our GPT, the ESP copied in, ext4 made at the partition offsets, GRUB's
//!    BIOS stages written; qcow2 conversion for `qemu`.
//! 8. Per platform, under the work directory lock: rename into place, register in
//!    meta.json (re-read under the lock, written atomically).
//!
//! Everything is built under a temporary name (`.cosa-tmp.` in the arch directory, or
//! the scratch directory under `tmp/`), removed on failure; an image appears under
//! its final name only once complete, together with its meta.json entry.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Deserialize;

use super::bls::BlsEntry;
use super::commit::{self, TreeSize};
use super::config::{self, IMAGE_JSON_PATH, ImageConfig, RootFs};
use super::deploy::{self, DeployOptions};
use super::disk::{self, Ext4};
use super::gpt;
use super::grub::{self, GrubSource};
use super::layout::{self, DISK_GUID, Layout, MIB, Role};
use super::privilege::{AsRoot, Scratch};
use crate::fsutil::TMP_PREFIX;
use crate::meta::{Artifact, Meta};
use crate::names::artifact_name;
use crate::workdir::Workdir;

/// The platforms cosa-image makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Platform {
    /// qcow2, `size` GB, ignition.platform.id=qemu.
    Qemu,
    /// raw, 512-byte sectors, sized to the tree, ignition.platform.id=metal.
    Metal,
    /// raw, 4096-byte sectors (UEFI only), sized to the tree, ignition.platform.id=metal.
    Metal4k,
}

impl Platform {
    /// The meta.json `images` key and the platform part of the file name.
    pub fn key(self) -> &'static str {
        match self {
            Platform::Qemu => "qemu",
            Platform::Metal => "metal",
            Platform::Metal4k => "metal4k",
        }
    }
    /// `ignition.platform.id`.
    pub fn ignition_id(self) -> &'static str {
        match self {
            Platform::Qemu => "qemu",
            Platform::Metal | Platform::Metal4k => "metal",
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            Platform::Qemu => "qcow2",
            Platform::Metal | Platform::Metal4k => "raw",
        }
    }
    pub fn sector_size(self) -> u64 {
        match self {
            Platform::Metal4k => 4096,
            _ => 512,
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Request {
    /// A build ID, or `None`/`latest` for `builds/latest`.
    pub build: Option<String>,
    pub arch: String,
    pub platforms: Vec<Platform>,
    pub force: bool,
}

/// One image made.
#[derive(Debug, Clone)]
pub struct Built {
    pub platform: Platform,
    pub path: Utf8PathBuf,
    pub artifact: Artifact,
    /// The root filesystem type used.
    pub rootfs: RootFs,
    /// Disk size (virtual size for qcow2).
    pub disk_size: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Made {
    pub build: String,
    pub built: Vec<Built>,
    /// Platforms skipped because meta.json already has them.
    pub skipped: Vec<Platform>,
}

/// Resolve `--build` (None or `latest` means `builds/latest`).
pub fn resolve_build(wd: &Workdir, build: Option<&str>) -> Result<String> {
    match build {
        None | Some("latest") => wd.latest_id()?.with_context(|| {
            format!(
                "no builds in {} (builds/latest does not exist)",
                wd.builds_dir()
            )
        }),
        Some(id) => {
            crate::names::validate_build_id(id)?;
            Ok(id.to_string())
        }
    }
}

/// Per-arch, per-platform boot settings a tree may ship in
/// `/usr/share/coreos-assembler/platforms.json` (as Fedora CoreOS does).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PlatformBoot {
    #[serde(default)]
    pub grub_commands: Vec<String>,
    #[serde(default)]
    pub kernel_arguments: Vec<String>,
}

pub const PLATFORMS_JSON_PATH: &str = "/usr/share/coreos-assembler/platforms.json";
type PlatformsJson = HashMap<String, HashMap<String, PlatformBoot>>;

/// Kernel arguments and GRUB console commands for a platform.
pub fn platform_boot(
    pj: Option<&PlatformsJson>,
    arch: &str,
    p: Platform,
) -> (Vec<String>, Vec<String>) {
    let mut kargs = vec![format!("ignition.platform.id={}", p.ignition_id())];
    let default_console = || {
        grub::DEFAULT_CONSOLE
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    match pj {
        Some(pj) => {
            let e = pj.get(arch).and_then(|a| a.get(p.ignition_id()));
            let console = match e {
                Some(e) if !e.grub_commands.is_empty() => e.grub_commands.clone(),
                _ => default_console(),
            };
            if let Some(e) = e {
                kargs.extend(e.kernel_arguments.iter().cloned());
            }
            (kargs, console)
        }
        None => {
            // Without platforms.json: Fedora CoreOS's qemu console settings, so that
            // `cosa-image run -nographic` shows the boot.
            if p == Platform::Qemu {
                kargs.extend(["console=tty0".into(), "console=ttyS0,115200n8".into()]);
            }
            (kargs, default_console())
        }
    }
}

/// Sizes derived from the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Smallest root partition that holds the deployment with coreos-assembler's 35 % margin.
    pub root_min: u64,
    /// Inodes the root filesystem needs.
    pub inodes: u64,
    /// The metal disk size: every other partition plus `root_min`.
    pub metal_disk: u64,
}

fn journal_bytes(fs: u64) -> u64 {
    // mke2fs's default journal sizes (ext2fs_default_journal_size), 4 KiB blocks.
    let blocks = fs / 4096;
    let j = match blocks {
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    };
    j * 4096
}

/// coreos-assembler's metal size: the tree's disk use plus 35 %, plus the other
/// partitions (513 MiB). Our tree use counts each distinct file content once (the
/// deployment hard-links into the repository), 4 KiB-rounded, the /etc copy, two
/// directory blocks per directory (deployment + repository), then ext4's journal and
/// inode tables on top of the 35 %.
pub fn sizing(t: &TreeSize) -> Sizing {
    let content = t.file_bytes + t.etc_bytes + (2 * t.dirs + 320) * 4096;
    let with_margin = content + content * 35 / 100;
    let inodes = (t.files + t.symlinks + 2 * t.dirs + 1000) * 135 / 100;
    let raw = with_margin + inodes * 256 + 16 * MIB;
    let root = raw + journal_bytes(raw);
    let root_min = root.div_ceil(MIB) * MIB;
    let metal_disk = (layout::NONROOT_MIB * MIB) + layout::TAIL_RESERVE + root_min;
    Sizing {
        root_min,
        inodes,
        metal_disk,
    }
}

/// Required external tools, with the Debian package that has them.
fn check_tools(platforms: &[Platform], asroot: AsRoot) -> Result<()> {
    let mut tools = vec![
        ("ostree", "ostree"),
        ("tar", "tar"),
        ("mkfs.ext4", "e2fsprogs"),
        ("mkfs.fat", "dosfstools"),
        ("mmd", "mtools"),
        ("mcopy", "mtools"),
        ("grub-mkimage", "grub-common"),
    ];
    if platforms.contains(&Platform::Qemu) {
        tools.push(("qemu-img", "qemu-utils"));
    }
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

/// The image configuration of a build: the commit's image.json, else src/config/image.yaml.
pub fn image_config(wd: &Workdir, repo: &Utf8Path, commit: &str) -> Result<ImageConfig> {
    if let Some(bytes) = commit::cat(repo, commit, IMAGE_JSON_PATH)? {
        return ImageConfig::from_json(&bytes, &format!("commit {commit}:{IMAGE_JSON_PATH}"));
    }
    let y = wd.config_dir().join("image.yaml");
    if !y.is_file() {
        bail!(
            "no image configuration: commit {commit} has no {IMAGE_JSON_PATH} and {y} does not exist"
        );
    }
    tracing::info!("commit {commit} has no {IMAGE_JSON_PATH}; using {y}");
    config::load(&y)
}

/// Make the requested images of a build.
pub fn build(wd: &Workdir, req: &Request) -> Result<Made> {
    let id = resolve_build(wd, req.build.as_deref())?;
    let arch = req.arch.as_str();
    let arch_dir = wd.build_arch_dir(&id, arch)?;
    let meta = wd.read_meta(&id, arch)?;
    let mut out = Made {
        build: id.clone(),
        ..Default::default()
    };
    let mut todo = Vec::new();
    for p in &req.platforms {
        if todo.contains(p) || out.skipped.contains(p) {
            continue;
        }
        if let Some(a) = meta.images.get(p.key())
            && !req.force
        {
            tracing::info!(
                "{} image already exists: {} (--force rebuilds it)",
                p.key(),
                a.path
            );
            out.skipped.push(*p);
        } else {
            todo.push(*p);
        }
    }
    if todo.is_empty() {
        return Ok(out);
    }
    let layout = Layout::for_arch(arch)?;
    let asroot = AsRoot::detect()?;
    check_tools(&todo, asroot)?;

    let repo = wd.repo_dir();
    let scratch = Scratch::new(
        &wd.tmp_dir(),
        &format!("image-{id}-{arch}"),
        asroot,
        "COSA_IMAGE_KEEP_SCRATCH",
    )?;
    let t0 = Instant::now();
    commit::ensure_commit(&repo, &meta, arch, &arch_dir, &scratch.path.join("import"))?;
    let commit = meta.ostree_commit.clone();
    let cfg = image_config(wd, &repo, &commit)?;
    let pj: Option<PlatformsJson> = match commit::cat(&repo, &commit, PLATFORMS_JSON_PATH)? {
        Some(b) => Some(crate::parse::json_from_slice(
            &b,
            &format!("commit {commit}:{PLATFORMS_JSON_PATH}"),
        )?),
        None => None,
    };
    let tree = commit::tree_size(&repo, &commit)?;
    if let (AsRoot::UserNs, Some((path, uid, gid))) = (asroot, &tree.non_root_owner) {
        bail!(
            "commit {commit} has files not owned by root ({path}: {uid}:{gid}); deploying it \
             needs root (a user namespace maps only uid 0)"
        );
    }
    let sz = sizing(&tree);
    let qemu_disk = u64::from(cfg.size_gb()) << 30;
    if todo.contains(&Platform::Qemu) && qemu_disk < sz.metal_disk {
        bail!(
            "a {} GiB disk (image.yaml size: {}) is too small for build {id}: it needs at least \
             {} MiB; set size: {} or more",
            cfg.size_gb(),
            cfg.size_gb(),
            sz.metal_disk.div_ceil(MIB),
            sz.metal_disk.div_ceil(1 << 30)
        );
    }
    let rootfs_used = match cfg.rootfs_requested() {
        RootFs::Ext4 => RootFs::Ext4,
        RootFs::Xfs => {
            tracing::warn!(
                "rootfs: xfs requested, but mkfs.xfs cannot fill a filesystem from a directory \
                 keeping hard links here; making the root filesystem ext4 instead"
            );
            RootFs::Ext4
        }
    };

    // Deploy once; platforms differ only in kernel arguments (on the boot filesystem).
    let osname = meta.name.clone();
    let refspec = meta.ostree_ref.as_ref().map(|r| match &cfg.ostree_remote {
        Some(remote) => format!("{remote}:{r}"),
        None => r.clone(),
    });
    let mut kargs = vec!["rw".to_string()];
    kargs.extend(cfg.extra_kargs.iter().cloned());
    kargs.push(format!("root=LABEL={}", layout::ROOT_FS_LABEL));
    let sysroot = scratch.path.join("sysroot");
    let deployed = deploy::deploy(
        asroot,
        &sysroot,
        &DeployOptions {
            osname,
            commit: commit.clone(),
            refspec,
            kargs,
            source_repo: repo.clone(),
        },
    )?;
    let boot = scratch.path.join("boot");
    deploy::split_boot(&sysroot, &boot)?;
    // Mount point of the ESP, as coreos-assembler makes it.
    std::fs::create_dir_all(boot.join("efi")).with_context(|| format!("creating {boot}/efi"))?;
    let base_entries = grub::read_entries(&boot)?;
    tracing::info!("deployed {commit} ({:.1} s)", t0.elapsed().as_secs_f64());

    // GRUB.
    let gs = GrubSource::find(&deployed.deployment, arch)?;
    tracing::info!(
        "GRUB from {} ({})",
        gs.dir,
        if gs.from_tree {
            "the tree"
        } else {
            "this host"
        }
    );
    let early = scratch.path.join("early.cfg");
    std::fs::write(&early, grub::early_cfg()).with_context(|| format!("writing {early}"))?;
    let grub2 = boot.join("grub2");
    let (efi_t, efi_name) = grub::efi_target(arch)?;
    gs.copy_modules(efi_t, &grub2)?;
    let efi_bin = scratch.path.join(efi_name);
    gs.mkimage_efi(arch, &early, &efi_bin)?;
    let bios = match grub::bios_target(arch) {
        Some(t) => {
            gs.copy_modules(t, &grub2)?;
            let core = scratch.path.join("core.img");
            gs.mkimage_bios(&early, &core)?;
            let core_img = std::fs::read(&core).with_context(|| format!("reading {core}"))?;
            Some((gs.boot_img()?, core_img))
        }
        None => None,
    };
    let esp_size = layout
        .part(Role::Esp)
        .and_then(|p| p.size)
        .context("layout without an ESP")?;
    let mut esps: HashMap<u64, Utf8PathBuf> = HashMap::new();
    for p in &todo {
        let s = p.sector_size();
        if let std::collections::hash_map::Entry::Vacant(v) = esps.entry(s) {
            let img = scratch.path.join(format!("esp-{s}.img"));
            let dest = format!("EFI/BOOT/{efi_name}");
            disk::make_esp(
                &img,
                esp_size,
                s,
                layout::ESP_LABEL,
                layout::ESP_VOLID,
                &[(&efi_bin, dest.as_str())],
            )?;
            v.insert(img);
        }
    }

    for p in todo {
        let t = Instant::now();
        let (pk, console) = platform_boot(pj.as_ref(), arch, p);
        let entries: Vec<BlsEntry> = base_entries
            .iter()
            .map(|e| {
                let mut e = e.clone();
                let mut k = e.kargs();
                k.extend(pk.iter().cloned());
                e.set_kargs(&k);
                e
            })
            .collect();
        grub::write_boot_config(&boot, &entries, &console)?;
        let disk_size = match p {
            Platform::Qemu => qemu_disk,
            _ => sz.metal_disk,
        };
        let name = artifact_name(&meta.name, &id, p.key(), arch, p.extension());
        let final_path = arch_dir.join(&name);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}{name}."))
            .tempfile_in(&arch_dir)
            .with_context(|| format!("creating a temporary file in {arch_dir}"))?;
        let tmp_path = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf())
            .map_err(|p| anyhow::anyhow!("non-UTF-8 path {}", p.display()))?;
        let raw = match p {
            Platform::Qemu => scratch.path.join(format!("{name}.raw")),
            _ => tmp_path.clone(),
        };
        let esp = esps.get(&p.sector_size()).context("ESP image missing")?;
        let parts = make_disk(
            DiskSpec {
                path: &raw,
                size: disk_size,
                sector: p.sector_size(),
                layout: &layout,
                esp,
                boot: &boot,
                root: &sysroot,
                boot_csum_seed: cfg.bootfs_metadata_csum_seed.unwrap_or(true),
                inodes: sz.inodes,
                bios: if p.sector_size() == 512 {
                    bios.as_ref()
                } else {
                    None
                },
            },
            asroot,
        )
        .with_context(|| format!("building the {} image {name}", p.key()))?;
        let root_part = parts.iter().find(|x| x.spec.role == Role::Root);
        if p == Platform::Qemu {
            disk::qemu_img_to_qcow2(&raw, &tmp_path)?;
            std::fs::remove_file(&raw).with_context(|| format!("removing {raw}"))?;
        }
        set_mode_0644(&tmp_path)?;
        let (sha256, size) = commit::sha256_file(&tmp_path)?;
        let artifact = Artifact {
            path: name.clone(),
            sha256,
            size: Some(size),
            uncompressed_sha256: None,
            uncompressed_size: None,
            skip_compression: None,
            extra: Default::default(),
        };
        register(wd, &id, arch, p, tmp, &final_path, &artifact)?;
        tracing::info!(
            "{}: {name}: {} MiB disk, root {} MiB {}, {} MiB file, {:.1} s",
            p.key(),
            disk_size >> 20,
            root_part.map(|r| r.size >> 20).unwrap_or(0),
            rootfs_used.as_str(),
            size >> 20,
            t.elapsed().as_secs_f64()
        );
        out.built.push(Built {
            platform: p,
            path: final_path,
            artifact,
            rootfs: rootfs_used,
            disk_size,
        });
    }
    scratch.close()?;
    Ok(out)
}

fn set_mode_0644(p: &Utf8Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting permissions of {p}"))
}

/// Rename the finished image into place and record it in meta.json, under the lock.
fn register(
    wd: &Workdir,
    id: &str,
    arch: &str,
    p: Platform,
    tmp: tempfile::NamedTempFile,
    final_path: &Utf8Path,
    artifact: &Artifact,
) -> Result<()> {
    let lock = wd.lock()?;
    // Re-read: another process may have added images since we started.
    let mut meta: Meta = wd.read_meta(id, arch)?;
    tmp.persist(final_path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the finished image to {final_path}"))?;
    meta.images.insert(p.key().to_string(), artifact.clone());
    if let Err(e) = wd.write_meta(&meta, arch, &lock) {
        let _ = std::fs::remove_file(final_path);
        return Err(e);
    }
    if let Some(d) = final_path.parent() {
        crate::fsutil::fsync_dir(d)?;
    }
    Ok(())
}

/// Everything that goes on one disk.
pub struct DiskSpec<'a> {
    pub path: &'a Utf8Path,
    pub size: u64,
    pub sector: u64,
    pub layout: &'a Layout,
    /// The ESP image to copy in (made for this sector size).
    pub esp: &'a Utf8Path,
    /// Contents of the boot filesystem.
    pub boot: &'a Utf8Path,
    /// Contents of the root filesystem (the staging sysroot, `/boot` empty).
    pub root: &'a Utf8Path,
    pub boot_csum_seed: bool,
    /// Inodes the root filesystem needs.
    pub inodes: u64,
    /// GRUB boot.img and core.img, for BIOS boot.
    pub bios: Option<&'a (Vec<u8>, Vec<u8>)>,
}

/// Write a whole disk file: GPT, ESP, boot and root ext4, GRUB's BIOS stages.
pub fn make_disk(d: DiskSpec<'_>, asroot: AsRoot) -> Result<Vec<layout::Placed>> {
    let placed = d.layout.place(d.size)?;
    let f = disk::create_sparse(d.path, d.size)?;
    gpt::write(&f, d.path, d.size, d.sector, DISK_GUID, &placed)?;
    let part = |r: Role| {
        placed
            .iter()
            .find(|p| p.spec.role == r)
            .with_context(|| format!("layout has no {r:?} partition"))
    };
    let esp = part(Role::Esp)?;
    disk::copy_sparse(d.esp, &f, d.path, esp.offset)?;
    let bootp = part(Role::Boot)?;
    disk::mkfs_ext4(
        asroot,
        &Ext4 {
            label: layout::BOOT_FS_LABEL,
            uuid: layout::BOOT_FS_UUID,
            source: d.boot,
            offset: bootp.offset,
            size: bootp.size,
            csum_seed: d.boot_csum_seed,
            inodes: None,
        },
        d.path,
    )?;
    let rootp = part(Role::Root)?;
    let default_inodes = rootp.size / 16384;
    disk::mkfs_ext4(
        asroot,
        &Ext4 {
            label: layout::ROOT_FS_LABEL,
            uuid: layout::ROOT_FS_UUID,
            source: d.root,
            offset: rootp.offset,
            size: rootp.size,
            csum_seed: false,
            inodes: (d.inodes > default_inodes).then_some(d.inodes),
        },
        d.path,
    )
    .with_context(|| {
        format!(
            "the root partition is {} MiB; if the tree does not fit, raise image.yaml size",
            rootp.size >> 20
        )
    })?;
    if let Some((boot_img, core_img)) = d.bios {
        let bb = part(Role::BiosBoot)?;
        grub::install_bios(&f, d.path, boot_img, core_img, bb.offset, bb.size)?;
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", d.path))?;
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metal_size_is_tree_plus_35_percent_plus_513() {
        let t = TreeSize {
            file_bytes: 1000 * MIB,
            etc_bytes: 0,
            files: 20000,
            dirs: 3000,
            symlinks: 1000,
            non_root_owner: None,
        };
        let s = sizing(&t);
        assert!(s.root_min >= 1350 * MIB && s.root_min < 1500 * MIB, "{s:?}");
        assert_eq!(s.metal_disk, s.root_min + 514 * MIB);
        assert!(s.inodes > 20000);
    }

    #[test]
    fn platform_kargs() {
        let (k, c) = platform_boot(None, "x86_64", Platform::Metal4k);
        assert_eq!(k, ["ignition.platform.id=metal"]);
        assert!(c[0].starts_with("serial"));
        let (k, _) = platform_boot(None, "x86_64", Platform::Qemu);
        assert!(k.contains(&"console=ttyS0,115200n8".to_string()));
        let pj: PlatformsJson = serde_json::from_str(
            r#"{"x86_64": {"metal": {"grub_commands": ["x"], "kernel_arguments": ["a=1"]}}}"#,
        )
        .unwrap();
        let (k, c) = platform_boot(Some(&pj), "x86_64", Platform::Metal);
        assert_eq!(k, ["ignition.platform.id=metal", "a=1"]);
        assert_eq!(c, ["x"]);
    }
}
