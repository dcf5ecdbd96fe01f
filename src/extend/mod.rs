//! `cosa-extend`: every coreos-assembler platform image of a build, the live ISO and
//! PXE files, and `compress`/`decompress`, without root, a VM or KVM.
//!
//! coreos-assembler's `cosa osbuild <platform>` (formerly `cosa buildextend-*`) builds
//! each platform's disk inside a VM. Here a build's disks come from one base: the
//! `qemu` disk that `cosa-image` makes (made first when the build has none).
//! A platform differs from it only in its kernel arguments, so each platform image
//! is the base with its boot filesystem's BLS entries and grub.cfg rewritten (with
//! `debugfs`, no mount), converted once by `qemu-img` into the platform's format and
//! wrapped as the platform wants it (tar.gz, OVA, OCI archive) — see [`derive`].
//! Several platforms in one call share that base and run in parallel, as many at a
//! time as there are CPUs.
//!
//! - [`platforms`]: the platform table (keys, suffixes, formats, platform IDs,
//!   consoles, compression).
//! - [`derive`]: the base, the boot filesystem edit, the conversion;
//!   [`bootfs`]: debugfs.
//! - [`ova`], [`oci`], [`archive`]: the OVA, the OCI archive, tar and cpio writers.
//! - [`live`]: the live ISO and PXE files.
//! - [`compress`]: `compress` and `decompress`.
//! - [`upload_aws`]: `upload-aws`, the aws image published as AMIs.
//! - [`cli`]: the command line.
//!
//! Every file is written under a `.cosa-tmp.` name in the build directory and renamed
//! to its final name under the work directory lock, together with its meta.json entry
//! (meta.json re-read under the lock and written atomically). An image meta.json
//! already lists is skipped unless `--force`.

pub mod archive;
pub mod bootfs;
pub mod cli;
pub mod compress;
pub mod derive;
pub mod live;
pub mod oci;
pub mod ova;
pub mod platforms;
pub mod upload_aws;

pub use cli::Args;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};

use self::derive::{Base, PlatformsJson};
use self::live::RootfsType;
use self::platforms::{LIVE_KEYS, Output, OvaFlavor, PlatformSpec};
use crate::fsutil::TMP_PREFIX;
use crate::image::Platform as ImagePlatform;
use crate::image::config::ImageConfig;
use crate::image::privilege::{AsRoot, Scratch};
use crate::meta::{Artifact, Meta};
use crate::names::artifact_name;
use crate::workdir::Workdir;

/// What to make.
#[derive(Debug, Clone)]
pub struct Request {
    /// A build ID, or `None`/`latest` for `builds/latest`.
    pub build: Option<String>,
    pub arch: String,
    /// Platform names (`all` for every one).
    pub platforms: Vec<String>,
    pub force: bool,
    pub live_rootfs: RootfsType,
}

/// One file made and registered.
#[derive(Debug, Clone)]
pub struct MadeFile {
    /// The meta.json images key.
    pub key: String,
    pub path: Utf8PathBuf,
    pub artifact: Artifact,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Made {
    pub build: String,
    pub made: Vec<MadeFile>,
    /// Platforms skipped because meta.json already has them.
    pub skipped: Vec<String>,
}

/// A file finished under a temporary name, waiting to be registered.
struct Pending {
    key: String,
    tmp: tempfile::NamedTempFile,
    final_name: String,
    artifact: Artifact,
}

/// The name of a file without a suffix, coreos-assembler's `live-kernel` naming
/// (`<name>-<build>-live-kernel.<arch>`).
pub fn artifact_name_no_ext(name: &str, build: &str, key: &str, arch: &str) -> String {
    let n = artifact_name(name, build, key, arch, "");
    n.strip_suffix('.').unwrap_or(&n).to_string()
}

/// A temporary file in `dir` for `name` (mode 0644).
fn temp_for(dir: &Utf8Path, name: &str) -> Result<(tempfile::NamedTempFile, Utf8PathBuf)> {
    let t = tempfile::Builder::new()
        .prefix(&format!("{TMP_PREFIX}{name}."))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {dir}"))?;
    let p = Utf8PathBuf::from_path_buf(t.path().to_path_buf())
        .map_err(|p| anyhow::anyhow!("non-UTF-8 path {}", p.display()))?;
    Ok((t, p))
}

/// Seconds since the epoch of an RFC 3339 time (0 when it does not parse).
fn epoch(ts: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(ts)
        .map(|t| u64::try_from(t.timestamp()).unwrap_or(0))
        .unwrap_or(0)
}

/// Everything the jobs share (read-only).
struct Ctx<'a> {
    meta: &'a Meta,
    arch: &'a str,
    arch_dir: &'a Utf8Path,
    scratch: &'a Utf8Path,
    cfg: &'a ImageConfig,
    pj: Option<&'a PlatformsJson>,
    base: Option<&'a Base>,
    /// The base platform's kernel arguments (removed from every derived image).
    base_kargs: &'a [String],
    repo: &'a Utf8Path,
    asroot: AsRoot,
    live_rootfs: RootfsType,
    mtime: u64,
}

impl Ctx<'_> {
    fn name(&self, spec: &PlatformSpec) -> String {
        artifact_name(
            &self.meta.name,
            &self.meta.buildid,
            spec.name,
            self.arch,
            spec.ext,
        )
    }

    fn job_dir(&self, name: &str) -> Result<Utf8PathBuf> {
        let d = self.scratch.join(format!("job-{name}"));
        std::fs::create_dir_all(&d).with_context(|| format!("creating {d}"))?;
        Ok(d)
    }

    fn finish_file(
        &self,
        key: &str,
        tmp: tempfile::NamedTempFile,
        name: String,
        sum: Option<(String, u64)>,
        skip_compression: bool,
    ) -> Result<Pending> {
        let p = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf())
            .map_err(|p| anyhow::anyhow!("non-UTF-8 path {}", p.display()))?;
        compress::set_mode_0644(&p)?;
        let (sha256, size) = match sum {
            Some(s) => s,
            None => derive::sha256_sparse(&p)?,
        };
        Ok(Pending {
            key: key.to_string(),
            tmp,
            final_name: name.clone(),
            artifact: Artifact {
                path: name,
                sha256,
                size: Some(size),
                uncompressed_sha256: None,
                uncompressed_size: None,
                skip_compression: skip_compression.then_some(true),
                extra: Default::default(),
            },
        })
    }

    /// Make one derived platform's file.
    fn derive(&self, spec: &PlatformSpec) -> Result<Vec<Pending>> {
        let base = self.base.context("no base disk")?;
        let dir = self.job_dir(spec.name)?;
        let boot = dir.join("boot.img");
        derive::sparse_copy(&base.boot_img, &boot)?;
        let (add, console) = derive::platform_boot(self.pj, self.arch, spec.ignition_id);
        derive::set_platform(
            &boot,
            &base.entries,
            self.base_kargs,
            spec.ignition_id,
            &add,
            &console,
            &dir,
        )
        .with_context(|| format!("setting the {} kernel arguments", spec.name))?;
        let target = spec.disk_size.map_or(base.size, |s| s.max(base.size));
        let pieces = base.pieces(&boot, target, &dir)?;
        let name = self.name(spec);
        let (tmp, tmp_path) = temp_for(self.arch_dir, &name)?;
        let sum = match spec.output {
            Output::Disk {
                format,
                options,
                compressed,
            } => {
                derive::convert(&pieces, format, options, compressed, &tmp_path)?;
                None
            }
            Output::GcpTar => {
                let raw = dir.join("disk.raw");
                derive::convert(&pieces, "raw", "", false, &raw)?;
                let s = derive::tar_gz(&dir, "disk.raw", self.mtime, &tmp_path)?;
                std::fs::remove_file(&raw).with_context(|| format!("removing {raw}"))?;
                Some(s)
            }
            Output::KubevirtOci => {
                let q = dir.join("disk.qcow2");
                derive::convert(&pieces, "qcow2", "compat=1.1", false, &q)?;
                let mut labels = serde_json::Map::new();
                labels.insert(
                    "org.opencontainers.image.version".into(),
                    self.meta.ostree_version.clone().into(),
                );
                labels.insert(
                    "org.opencontainers.image.title".into(),
                    self.meta.name.clone().into(),
                );
                let disk_name = format!("{}.qcow2", self.meta.name);
                let ref_name = format!("{}-{}", self.meta.buildid, self.arch);
                let s = oci::write_archive(
                    &tmp_path,
                    &oci::DiskImage {
                        qcow2: &q,
                        disk_name: &disk_name,
                        arch: self.arch,
                        mtime: self.mtime,
                        ref_name: &ref_name,
                        labels,
                    },
                )?;
                Some(s)
            }
            Output::Ova(flavor) => {
                let vmdk = dir.join("disk.vmdk");
                let options = match flavor {
                    OvaFlavor::Vmware => platforms::VMDK_AWS_OPTIONS,
                    OvaFlavor::Virtualbox => platforms::VMDK_VIRTUALBOX_OPTIONS,
                };
                derive::convert(&pieces, "vmdk", options, false, &vmdk)?;
                let vmdk_size = std::fs::metadata(&vmdk)
                    .with_context(|| format!("reading {vmdk}"))?
                    .len();
                let (hw_version, os_type, secure_boot) = ova::OvfParams::vmware_from(self.cfg);
                let params = ova::OvfParams {
                    flavor,
                    name: format!("{}-{}", self.meta.name, self.meta.ostree_version),
                    product: self.meta.name.clone(),
                    vendor: self.meta.name.clone(),
                    version: self.meta.ostree_version.clone(),
                    vmdk_size,
                    capacity: target,
                    hw_version,
                    os_type,
                    secure_boot,
                };
                Some(ova::write_ova(&tmp_path, &vmdk, &params, self.mtime)?)
            }
            Output::Native(_) | Output::Live => bail!("{} is not a derived platform", spec.name),
        };
        let p = self.finish_file(spec.name, tmp, name, sum, spec.skip_compression)?;
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {dir}"))?;
        Ok(vec![p])
    }

    /// Make the live artifacts.
    fn live(&self) -> Result<Vec<Pending>> {
        let dir = self.job_dir("live")?;
        let m = self.meta;
        let names = [
            artifact_name(&m.name, &m.buildid, "live-iso", self.arch, "iso"),
            artifact_name_no_ext(&m.name, &m.buildid, "live-kernel", self.arch),
            artifact_name(&m.name, &m.buildid, "live-initramfs", self.arch, "img"),
            artifact_name(&m.name, &m.buildid, "live-rootfs", self.arch, "img"),
        ];
        let mut temps = Vec::new();
        for n in &names {
            temps.push(temp_for(self.arch_dir, n)?);
        }
        live::make(
            &live::LiveInputs {
                meta: m,
                arch: self.arch,
                cfg: self.cfg,
                pj: self.pj,
                repo: self.repo,
                asroot: self.asroot,
                fstype: self.live_rootfs,
                mtime: self.mtime,
            },
            &live::LiveOutputs {
                iso: &temps[0].1,
                kernel: &temps[1].1,
                initramfs: &temps[2].1,
                rootfs: &temps[3].1,
            },
            &dir,
        )?;
        let mut out = Vec::new();
        for ((key, name), (tmp, _)) in LIVE_KEYS.iter().zip(names).zip(temps) {
            out.push(self.finish_file(key, tmp, name, None, true)?);
        }
        self.asroot.remove_tree(&dir)?;
        Ok(out)
    }
}

/// Rename finished files into place and record them in meta.json, under the lock.
/// Files a replaced entry pointed to (e.g. an older compressed copy) are removed.
fn register(
    wd: &Workdir,
    id: &str,
    arch: &str,
    dir: &Utf8Path,
    files: Vec<Pending>,
) -> Result<Vec<MadeFile>> {
    let lock = wd.lock()?;
    let mut meta = wd.read_meta(id, arch)?;
    let mut placed: Vec<Utf8PathBuf> = Vec::new();
    let mut old = Vec::new();
    let mut made = Vec::new();
    for f in files {
        let final_path = dir.join(&f.final_name);
        if let Err(e) = f.tmp.persist(&final_path) {
            for p in &placed {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.error).with_context(|| format!("renaming into place {final_path}"));
        }
        placed.push(final_path.clone());
        if let Some(prev) = meta.images.insert(f.key.clone(), f.artifact.clone())
            && prev.path != f.final_name
        {
            old.push(prev.path);
        }
        made.push(MadeFile {
            key: f.key,
            path: final_path,
            artifact: f.artifact,
        });
    }
    if let Err(e) = wd.write_meta(&meta, arch, &lock) {
        for p in &placed {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    crate::fsutil::fsync_dir(dir)?;
    drop(lock);
    for o in old {
        if !meta.images.values().any(|a| a.path == o) {
            let p = dir.join(&o);
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("removing the replaced {p}: {e}");
            }
        }
    }
    Ok(made)
}

fn check_tools(derived: bool, gcp: bool) -> Result<()> {
    let mut tools = Vec::new();
    if derived {
        tools.extend([("qemu-img", "qemu-utils"), ("debugfs", "e2fsprogs")]);
    }
    if gcp {
        tools.push(("tar", "tar"));
    }
    for (t, pkg) in tools {
        if !crate::cmd::have(t) {
            bail!("{t} not found on PATH (Debian/Ubuntu package: {pkg})");
        }
    }
    if gcp {
        compress::gzip_command(false)?;
    }
    Ok(())
}

/// Check the base disk against its meta.json sha256.
fn check_sha256(path: &Utf8Path, want: &str) -> Result<()> {
    let (got, _) = crate::fsutil::sha256_file(path)?;
    if got != want {
        bail!(
            "{path}: sha256 {got} does not match meta.json images.qemu ({want}); the image is \
             corrupt or was changed (rebuild it with cosa-extend --platform qemu --force)"
        );
    }
    Ok(())
}

/// Make the requested platform images of a build.
pub fn extend(wd: &Workdir, req: &Request) -> Result<Made> {
    let specs = platforms::resolve(&req.platforms)?;
    crate::names::validate_arch(&req.arch)?;
    let id = crate::image::build::resolve_build(wd, req.build.as_deref())?;
    let arch = req.arch.as_str();
    let arch_dir = wd.build_arch_dir(&id, arch)?;
    let mut meta = wd.read_meta(&id, arch)?;
    let mut out = Made {
        build: id.clone(),
        ..Default::default()
    };
    let mut todo: Vec<&PlatformSpec> = Vec::new();
    for s in specs {
        let present = match s.output {
            Output::Live => LIVE_KEYS.iter().all(|k| meta.images.contains_key(*k)),
            _ => meta.images.contains_key(s.name),
        };
        if present && !req.force {
            tracing::info!("{}: already built (--force rebuilds it)", s.name);
            out.skipped.push(s.name.to_string());
        } else {
            todo.push(s);
        }
    }
    if todo.is_empty() {
        return Ok(out);
    }
    let derived: Vec<&PlatformSpec> = todo
        .iter()
        .copied()
        .filter(|s| !matches!(s.output, Output::Native(_) | Output::Live))
        .collect();
    let want_live = todo.iter().any(|s| s.output == Output::Live);
    let mut natives: Vec<ImagePlatform> = todo
        .iter()
        .filter_map(|s| match s.output {
            Output::Native(p) => Some(p),
            _ => None,
        })
        .collect();
    if !derived.is_empty()
        && !meta.images.contains_key("qemu")
        && !natives.contains(&ImagePlatform::Qemu)
    {
        tracing::info!("build {id} has no qemu image, the base of the other platforms: making it");
        natives.insert(0, ImagePlatform::Qemu);
    }
    check_tools(
        !derived.is_empty(),
        derived.iter().any(|s| s.output == Output::GcpTar),
    )?;
    let asroot = if want_live {
        let a = AsRoot::detect()?;
        live::check_tools(req.live_rootfs, a)?;
        a
    } else {
        AsRoot::Direct
    };
    let mut fresh_qemu = false;
    if !natives.is_empty() {
        let made = crate::image::build(
            wd,
            &crate::image::Request {
                build: Some(id.clone()),
                arch: arch.to_string(),
                platforms: natives,
                force: req.force,
            },
        )?;
        for b in made.built {
            fresh_qemu |= b.platform == ImagePlatform::Qemu;
            out.made.push(MadeFile {
                key: b.platform.key().to_string(),
                path: b.path,
                artifact: b.artifact,
            });
        }
        meta = wd.read_meta(&id, arch)?;
    }
    if derived.is_empty() && !want_live {
        return Ok(out);
    }

    crate::scratch::remove_stale_tmp(&arch_dir)?;
    let t0 = Instant::now();
    let scratch = Scratch::new(
        &wd.tmp_dir(),
        &format!("extend-{id}-{arch}"),
        asroot,
        "COSA_EXTEND_KEEP_SCRATCH",
    )?;
    let repo = wd.repo_dir();
    crate::image::commit::ensure_commit(
        &repo,
        &meta,
        arch,
        &arch_dir,
        &scratch.path.join("import"),
    )?;
    let commit = &meta.ostree_commit;
    let cfg = crate::image::build::image_config(wd, &repo, commit)?;
    let pj: Option<PlatformsJson> =
        match crate::image::commit::cat(&repo, commit, crate::image::build::PLATFORMS_JSON_PATH)? {
            Some(b) => Some(crate::parse::json_from_slice(
                &b,
                &format!(
                    "commit {commit}:{}",
                    crate::image::build::PLATFORMS_JSON_PATH
                ),
            )?),
            None => None,
        };

    // The base disk, and whether its sha256 still has to be checked.
    let mut verify: Option<(Utf8PathBuf, String)> = None;
    let base = if derived.is_empty() {
        None
    } else {
        let q = meta
            .images
            .get("qemu")
            .with_context(|| format!("build {id}: no images.qemu after making it"))?;
        let src = arch_dir.join(&q.path);
        if !src.is_file() {
            bail!(
                "{src} (images.qemu) does not exist; fetch it with the build or rebuild it with --force"
            );
        }
        let path = match (compress::compressor_of(&q.path), &q.uncompressed_sha256) {
            (Some(c), Some(usum)) => {
                let p = scratch.path.join("base.qcow2");
                tracing::info!("decompressing {src} to use it as the base");
                compress::decompress_to(&src, c, &p, usum)?;
                p
            }
            (Some(_), None) => bail!("{src}: compressed, but meta.json has no uncompressed-sha256"),
            (None, _) => {
                if !fresh_qemu {
                    verify = Some((src.clone(), q.sha256.clone()));
                }
                src.clone()
            }
        };
        match Base::open(&path, "qcow2", arch, &scratch.path) {
            Ok(b) => Some(b),
            Err(e) => {
                // Unreadable: say whether it is also not what meta.json recorded.
                if let Some((p, want)) = &verify {
                    check_sha256(p, want)?;
                }
                return Err(e.context(format!("reading the base disk {src}")));
            }
        }
    };
    let base_kargs: Vec<String> =
        crate::image::build::platform_boot(pj.as_ref(), arch, ImagePlatform::Qemu).0;
    let ctx = Ctx {
        meta: &meta,
        arch,
        arch_dir: &arch_dir,
        scratch: &scratch.path,
        cfg: &cfg,
        pj: pj.as_ref(),
        base: base.as_ref(),
        base_kargs: &base_kargs,
        repo: &repo,
        asroot,
        live_rootfs: req.live_rootfs,
        mtime: epoch(&meta.ostree_timestamp),
    };

    // Jobs: the live files first (the longest), then the disks.
    let mut jobs: Vec<&PlatformSpec> = todo
        .iter()
        .copied()
        .filter(|s| s.output == Output::Live)
        .collect();
    jobs.extend(derived.iter().copied());
    let queue = Mutex::new(jobs.clone());
    let abort = AtomicBool::new(false);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(jobs.len())
        .max(1);
    let (tx, rx) = mpsc::channel::<(&'static str, Result<Vec<Pending>>, f64)>();
    let mut errors: Vec<String> = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..workers {
            let tx = tx.clone();
            let (queue, abort, ctx) = (&queue, &abort, &ctx);
            s.spawn(move || {
                loop {
                    if abort.load(Ordering::SeqCst) {
                        break;
                    }
                    let job = match queue.lock() {
                        Ok(mut q) => q.pop(),
                        Err(_) => None,
                    };
                    let Some(spec) = job else { break };
                    let t = Instant::now();
                    let r = if spec.output == Output::Live {
                        ctx.live()
                    } else {
                        ctx.derive(spec)
                    };
                    if tx.send((spec.name, r, t.elapsed().as_secs_f64())).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // While the workers run: check the base against meta.json.
        if let Some((path, want)) = &verify
            && let Err(e) = check_sha256(path, want)
        {
            abort.store(true, Ordering::SeqCst);
            if let Ok(mut q) = queue.lock() {
                q.clear();
            }
            errors.push(format!("{e:#}"));
        }
        for (name, r, secs) in rx {
            match r {
                Ok(files) if errors.is_empty() => {
                    let made = register(wd, &id, arch, &arch_dir, files)?;
                    for m in made {
                        tracing::info!(
                            "{}: {} ({} MiB, {secs:.1} s)",
                            m.key,
                            m.artifact.path,
                            m.artifact.size.unwrap_or(0) >> 20
                        );
                        out.made.push(m);
                    }
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("{name}: {e:#}")),
            }
        }
        Ok(())
    })?;
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    scratch.close()?;
    tracing::info!(
        "{} platform file(s) of build {id} in {:.1} s",
        out.made.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_without_suffix() {
        assert_eq!(
            artifact_name_no_ext("fedora-coreos", "43.1", "live-kernel", "x86_64"),
            "fedora-coreos-43.1-live-kernel.x86_64"
        );
        assert_eq!(epoch("2024-01-01T00:00:00Z"), 1_704_067_200);
        assert_eq!(epoch("nope"), 0);
    }
}
