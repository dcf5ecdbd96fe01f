//! `image.yaml`: how a build's OSTree commit becomes a disk.
//!
//! The config repo's `image.yaml` is flattened at compose time (its `include` chain
//! resolved) and the result is stored in the commit as
//! `/usr/share/coreos-assembler/image.json`, as coreos-assembler does, so an image made
//! later from the same build is made the same way. [`load`] reads and flattens the YAML;
//! [`ImageConfig::from_json`] reads the flattened JSON back.
//!
//! Keys (all optional; unknown keys are errors):
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `size` | disk size in GiB (coreos-assembler calls it GB: `size * 1024` MiB) for `qemu` and cloud images | 10 |
//! | `bootfs` | the `boot` filesystem: `ext4` | `ext4` |
//! | `rootfs` | the `root` filesystem: `ext4`, or `xfs` (see below) | `ext4` |
//! | `extra-kargs` | kernel arguments added to every image | none |
//! | `ostree-remote` | remote name the deployment's origin refers to | none |
//! | `compressor` | `xz`, `gzip` or `zstd`, for a later compress step | (gzip) |
//! | `platform-compressor` | per-platform override of `compressor` | none |
//! | `include` | another image.yaml, relative to this one | none |
//! | `bootfs-metadata-csum-seed` | ext4 `metadata_csum_seed` on `boot` | false |
//! | `vmware-hw-version`, `vmware-os-type`, `vmware-secure-boot` | read by VMware images | |
//! | `aws-imdsv2-only`, `aws-volume-type`, `aws-x86-boot-mode` | read by AWS images | |
//!
//! `rootfs: xfs` is coreos-assembler's default, but filling an XFS filesystem from a
//! directory needs `mkfs.xfs -p <dir>` support that keeps hard links (an OSTree
//! deployment is made of hard links into the repository), which xfsprogs before 6.14
//! lacks (Debian 12 has 6.1, where `-p DIR` fails). Our default is therefore `ext4`;
//! an explicit `xfs` makes an `ext4` root anyway and says so on stderr (the
//! filesystem used is printed for every image). Everything else finds the root by
//! `root=UUID=`, which is the same for both.
//!
//! Includes are resolved relative to the including file, up to [`MAX_INCLUDE_DEPTH`]
//! deep, and a loop (the same file, by device and inode) is an error. Merging follows
//! coreos-assembler's `flatten_image_yaml`: `extra-kargs` lists are concatenated
//! (included file first) without duplicates; for every other key the including file
//! wins; `platform-compressor` maps are merged key by key, the including file winning.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// Disk size in GiB when `size` is not given (Fedora CoreOS's value).
pub const DEFAULT_SIZE_GB: u32 = 10;
/// How deep `include` chains may go.
pub const MAX_INCLUDE_DEPTH: usize = 50;
/// Where compose stores the flattened config inside the commit.
pub const IMAGE_JSON_PATH: &str = "/usr/share/coreos-assembler/image.json";

/// The boot filesystem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootFs {
    Ext4,
}

/// The root filesystem type requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootFs {
    Ext4,
    Xfs,
}

impl RootFs {
    pub fn as_str(self) -> &'static str {
        match self {
            RootFs::Ext4 => "ext4",
            RootFs::Xfs => "xfs",
        }
    }
}

/// A compressor for `cosa compress`-like steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compressor {
    Xz,
    Gzip,
    Zstd,
}

/// The flattened image configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ImageConfig {
    /// Disk size in GiB for `qemu` (and cloud) images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootfs: Option<BootFs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootFs>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_kargs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ostree_remote: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressor: Option<Compressor>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub platform_compressor: IndexMap<String, Compressor>,
    /// Another image.yaml to build on; always `None` after [`load`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<String>,
    /// ext4 `metadata_csum_seed` on the boot filesystem (lets the UUID change later
    /// without rewriting every checksum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootfs_metadata_csum_seed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmware_hw_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmware_os_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmware_secure_boot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_imdsv2_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_volume_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_x86_boot_mode: Option<String>,
}

impl ImageConfig {
    /// The disk size in GiB for `qemu` images.
    pub fn size_gb(&self) -> u32 {
        self.size.unwrap_or(DEFAULT_SIZE_GB)
    }

    /// The root filesystem requested (before the xfs fallback, see the module docs).
    pub fn rootfs_requested(&self) -> RootFs {
        self.rootfs.unwrap_or(RootFs::Ext4)
    }

    /// The compressor for a platform's image (gzip when nothing is configured, as
    /// coreos-assembler's `cmd-compress`).
    pub fn compressor_for(&self, platform: &str) -> Compressor {
        self.platform_compressor
            .get(platform)
            .copied()
            .or(self.compressor)
            .unwrap_or(Compressor::Gzip)
    }

    /// Parse one image.yaml document (its `include` not resolved); `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let c: Self = crate::parse::yaml_from_str(text, origin)?;
        c.validate(origin)?;
        Ok(c)
    }

    /// Parse the flattened JSON compose stored in the commit; `origin` names it in errors.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self> {
        let c: Self = crate::parse::json_from_slice(bytes, origin)?;
        c.validate(origin)?;
        if c.include.is_some() {
            bail!("{origin}: a flattened image config must not have `include`");
        }
        Ok(c)
    }

    /// Checks types cannot express.
    pub fn validate(&self, origin: &str) -> Result<()> {
        if self.size == Some(0) {
            bail!("{origin}: size: must be at least 1 (GB)");
        }
        for k in &self.extra_kargs {
            if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("{origin}: extra-kargs: {k:?} is not a single kernel argument");
            }
            // GRUB config quoting: keep kargs free of characters grub.cfg would interpret.
            if k.chars()
                .any(|c| matches!(c, '\'' | '"' | '\\' | '$' | ';' | '{' | '}'))
            {
                bail!("{origin}: extra-kargs: {k:?} contains a quote, '\\', '$', ';' or a brace");
            }
        }
        if let Some(r) = &self.ostree_remote
            && (r.is_empty() || r.contains('/') || r.chars().any(char::is_whitespace))
        {
            bail!("{origin}: ostree-remote: {r:?} is not a remote name");
        }
        Ok(())
    }

    /// Merge `self` (the including file) over `base` (the included one).
    fn over(self, base: ImageConfig) -> ImageConfig {
        let mut kargs = base.extra_kargs;
        for k in self.extra_kargs {
            if !kargs.contains(&k) {
                kargs.push(k);
            }
        }
        let mut pc = base.platform_compressor;
        for (k, v) in self.platform_compressor {
            pc.insert(k, v);
        }
        ImageConfig {
            size: self.size.or(base.size),
            bootfs: self.bootfs.or(base.bootfs),
            rootfs: self.rootfs.or(base.rootfs),
            extra_kargs: kargs,
            ostree_remote: self.ostree_remote.or(base.ostree_remote),
            compressor: self.compressor.or(base.compressor),
            platform_compressor: pc,
            include: None,
            bootfs_metadata_csum_seed: self
                .bootfs_metadata_csum_seed
                .or(base.bootfs_metadata_csum_seed),
            vmware_hw_version: self.vmware_hw_version.or(base.vmware_hw_version),
            vmware_os_type: self.vmware_os_type.or(base.vmware_os_type),
            vmware_secure_boot: self.vmware_secure_boot.or(base.vmware_secure_boot),
            aws_imdsv2_only: self.aws_imdsv2_only.or(base.aws_imdsv2_only),
            aws_volume_type: self.aws_volume_type.or(base.aws_volume_type),
            aws_x86_boot_mode: self.aws_x86_boot_mode.or(base.aws_x86_boot_mode),
        }
    }
}

/// Read `path` and resolve its `include` chain into one flattened config.
pub fn load(path: &Utf8Path) -> Result<ImageConfig> {
    let mut seen = HashSet::new();
    load_recurse(path, &mut seen, 0)
}

fn load_recurse(
    path: &Utf8Path,
    seen: &mut HashSet<(u64, u64)>,
    depth: usize,
) -> Result<ImageConfig> {
    let md = std::fs::metadata(path).with_context(|| format!("reading {path}"))?;
    if !seen.insert((md.dev(), md.ino())) {
        bail!("{path}: include loop (this file includes itself, directly or not)");
    }
    let bytes = crate::parse::read_limited(path, crate::parse::MAX_YAML_BYTES)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| anyhow::anyhow!("{path}: not valid UTF-8 (at byte {})", e.valid_up_to()))?;
    let cfg = ImageConfig::from_yaml(text, path.as_str())?;
    let Some(inc) = cfg.include.clone() else {
        return Ok(cfg);
    };
    if depth + 1 >= MAX_INCLUDE_DEPTH {
        bail!("{path}: include: chain deeper than {MAX_INCLUDE_DEPTH} files");
    }
    if inc.is_empty() {
        bail!("{path}: include: empty file name");
    }
    let dir = path.parent().unwrap_or(Utf8Path::new("."));
    let inc_path: Utf8PathBuf = dir.join(&inc);
    let base = load_recurse(&inc_path, seen, depth + 1)
        .with_context(|| format!("{path}: include {inc}"))?;
    Ok(cfg.over(base))
}

#[cfg(test)]
mod tests {
    use super::*;
    use indoc::indoc;

    fn write(dir: &Utf8Path, name: &str, text: &str) -> Utf8PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmp() -> (tempfile::TempDir, Utf8PathBuf) {
        let td = tempfile::tempdir().unwrap();
        let p = Utf8PathBuf::from_path_buf(td.path().to_path_buf()).unwrap();
        (td, p)
    }

    #[test]
    fn all_keys_parse_and_round_trip_through_json() {
        let c = ImageConfig::from_yaml(
            indoc! {"
                size: 8
                bootfs: ext4
                rootfs: xfs
                extra-kargs: ['mitigations=auto,nosmt', console=ttyS0]
                ostree-remote: fedora
                compressor: xz
                platform-compressor: {qemu: zstd}
                bootfs-metadata-csum-seed: true
                vmware-hw-version: 17
                vmware-os-type: fedora64Guest
                vmware-secure-boot: true
                aws-imdsv2-only: true
                aws-volume-type: gp3
                aws-x86-boot-mode: uefi-preferred
            "},
            "image.yaml",
        )
        .unwrap();
        assert_eq!(c.size_gb(), 8);
        assert_eq!(c.extra_kargs, ["mitigations=auto,nosmt", "console=ttyS0"]);
        assert_eq!(c.compressor_for("qemu"), Compressor::Zstd);
        assert_eq!(c.compressor_for("metal"), Compressor::Xz);
        let json = serde_json::to_vec(&c).unwrap();
        assert_eq!(ImageConfig::from_json(&json, "image.json").unwrap(), c);
        let s = String::from_utf8(json).unwrap();
        assert!(
            s.contains("\"extra-kargs\"") && s.contains("\"aws-x86-boot-mode\""),
            "{s}"
        );
    }

    #[test]
    fn empty_file_means_defaults() {
        let c = ImageConfig::from_yaml("{}\n", "image.yaml").unwrap();
        assert_eq!(c.size_gb(), DEFAULT_SIZE_GB);
        assert_eq!(c.rootfs_requested(), RootFs::Ext4);
        assert_eq!(serde_json::to_string(&c).unwrap(), "{}");
    }

    #[test]
    fn bad_documents_name_file_and_line() {
        for (text, want) in [
            ("size: 10\nbogus-key: 1\n", "image.yaml:2:"),
            ("size: ten\n", "image.yaml:1:"),
            ("rootfs: btrfs\n", "image.yaml:1:"),
            ("bootfs: xfs\n", "image.yaml:1:"),
            ("extra-kargs: [a\n", "image.yaml:"),
            ("size: 0\n", "image.yaml: size"),
            ("extra-kargs: ['a b']\n", "image.yaml: extra-kargs"),
        ] {
            let e = format!(
                "{:#}",
                ImageConfig::from_yaml(text, "image.yaml").unwrap_err()
            );
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn includes_merge_like_coreos_assembler() {
        let (_td, d) = tmp();
        std::fs::create_dir(d.join("sub")).unwrap();
        write(
            &d,
            "sub/base.yaml",
            "size: 10\nrootfs: xfs\nextra-kargs: [a, b]\nplatform-compressor: {qemu: xz, metal: gzip}\n",
        );
        write(
            &d,
            "mid.yaml",
            "include: sub/base.yaml\nsize: 5\nextra-kargs: [b, c]\n",
        );
        let top = write(
            &d,
            "image.yaml",
            "include: mid.yaml\nrootfs: ext4\nextra-kargs: [d, a]\nplatform-compressor: {qemu: zstd}\n",
        );
        let c = load(&top).unwrap();
        assert_eq!(c.size, Some(5));
        assert_eq!(c.rootfs, Some(RootFs::Ext4));
        assert_eq!(c.extra_kargs, ["a", "b", "c", "d"]);
        assert_eq!(c.include, None);
        assert_eq!(c.compressor_for("qemu"), Compressor::Zstd);
        assert_eq!(c.compressor_for("metal"), Compressor::Gzip);
    }

    #[test]
    fn include_loops_and_missing_files_are_errors() {
        let (_td, d) = tmp();
        write(&d, "a.yaml", "include: b.yaml\n");
        write(&d, "b.yaml", "include: ./a.yaml\n");
        let e = format!("{:#}", load(&d.join("a.yaml")).unwrap_err());
        assert!(e.contains("include loop"), "{e}");
        let me = write(&d, "self.yaml", "include: self.yaml\n");
        assert!(format!("{:#}", load(&me).unwrap_err()).contains("include loop"));
        let m = write(&d, "m.yaml", "include: nope.yaml\n");
        let e = format!("{:#}", load(&m).unwrap_err());
        assert!(e.contains("nope.yaml"), "{e}");
        let e = format!("{:#}", load(&d.join("absent.yaml")).unwrap_err());
        assert!(e.contains("absent.yaml"), "{e}");
        // An error inside an included file names that file and line.
        write(&d, "broken.yaml", "size: 1\nwhat: 2\n");
        let i = write(&d, "inc.yaml", "include: broken.yaml\n");
        let e = format!("{:#}", load(&i).unwrap_err());
        assert!(e.contains("broken.yaml:2:"), "{e}");
    }

    #[test]
    fn json_with_include_or_unknown_keys_refused() {
        assert!(ImageConfig::from_json(br#"{"include":"x"}"#, "image.json").is_err());
        assert!(ImageConfig::from_json(br#"{"sizee":1}"#, "image.json").is_err());
    }
}
