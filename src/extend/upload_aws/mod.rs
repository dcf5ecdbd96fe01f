//! `cosa-extend upload-aws`: publish a build's `aws` image (vmdk) as AMIs, as
//! coreos-assembler's `ore aws upload` does: the vmdk goes to S3 (through the S3
//! store code), EC2 imports it as an EBS snapshot, the snapshot is registered as an
//! HVM image with ENA in the primary region, and the image is copied to every other
//! region. Each region's image is recorded in meta.json's `amis` as soon as it is
//! available (see [`amis`]).
//!
//! Idempotent and resumable, by name: the image name (default
//! `<name>-<build>-<arch>`) is also the import task's description and the
//! snapshot's `Name` tag. A rerun reuses, in this order, an image of that name in
//! a region, a completed snapshot tagged with it, a running or completed import
//! task described by it; only then does it upload and import again. The vmdk is
//! not sent again when the bucket has it with the same sha256. Every image and
//! snapshot is tagged `Name` and `cosa-build-id`.
//!
//! Credentials and endpoints: those of the S3 store ([`crate::store::awsconfig`]),
//! EC2 honouring `AWS_ENDPOINT_URL_EC2` as well.

pub mod amis;
pub mod ec2;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::types::{ArchitectureValues, BootModeValues, VolumeType};
use camino::Utf8Path;
use clap::ValueEnum;

use self::amis::Ami;
use self::ec2::{Ec2, ImportState, Registration, root_snapshot};
use crate::image::config::ImageConfig;
use crate::meta::{Artifact, Meta};
use crate::store::{Client, Location, PutMeta, Store, StoreOptions};
use crate::workdir::Workdir;

/// The meta.json images key of the image uploaded.
pub const IMAGE_KEY: &str = "aws";
/// The tag holding the build ID.
pub const BUILD_TAG: &str = "cosa-build-id";

/// x86_64 boot modes (`--boot-mode`, image.yaml `aws-x86-boot-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootMode {
    UefiPreferred,
    LegacyBios,
    Uefi,
}

impl BootMode {
    fn ec2(self) -> BootModeValues {
        match self {
            Self::UefiPreferred => BootModeValues::UefiPreferred,
            Self::LegacyBios => BootModeValues::LegacyBios,
            Self::Uefi => BootModeValues::Uefi,
        }
    }
}

/// What to publish, and where.
#[derive(Debug, Clone)]
pub struct Request {
    /// A build ID, or `None`/`latest` for `builds/latest`.
    pub build: Option<String>,
    pub arch: String,
    /// `s3://bucket/prefix` the vmdk is uploaded to for the import.
    pub bucket: String,
    /// The region the image is imported and registered in.
    pub region: String,
    /// Regions the image is copied to.
    pub copy_to: Vec<String>,
    /// Grant everyone launch permission (and volume creation from the snapshot).
    pub public: bool,
    /// The image name (default `<name>-<build>-<arch>`).
    pub name: Option<String>,
    /// Default: image.yaml `aws-x86-boot-mode`, else uefi-preferred (x86_64 only).
    pub boot_mode: Option<BootMode>,
    /// Default: image.yaml `aws-imdsv2-only`, else true.
    pub imds_v2_only: Option<bool>,
    /// Default: image.yaml `aws-volume-type`, else gp3.
    pub volume_type: Option<String>,
    /// Endpoint for S3 and EC2 (else `AWS_ENDPOINT_URL(_S3|_EC2)`, else AWS).
    pub endpoint_url: Option<String>,
    /// How long to wait for the snapshot import, and for each image to become available.
    pub import_timeout: Duration,
    /// How often to ask.
    pub poll_interval: Duration,
}

/// The outcome: every region's image, in the order done.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub build: String,
    pub amis: Vec<Ami>,
}

/// The resolved settings of the images.
struct Settings {
    name: String,
    description: String,
    architecture: ArchitectureValues,
    boot_mode: BootModeValues,
    volume_type: VolumeType,
    imds_v2_only: bool,
    tags: Vec<(String, String)>,
}

const VOLUME_TYPES: &[&str] = &["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];

/// AWS's AMI name rule: 3 to 128 of letters, digits and `()[]./-'@_ `.
fn validate_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "()[]./-'@_ ".contains(c);
    if !(3..=128).contains(&name.len()) || !name.chars().all(ok_char) {
        bail!("image name {name:?}: AWS wants 3 to 128 letters, digits, spaces or ()[]./-'@_");
    }
    Ok(())
}

fn validate_region(r: &str) -> Result<()> {
    if r.is_empty()
        || r.len() > 32
        || !r
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("region {r:?}: not an AWS region name (like us-east-1)");
    }
    Ok(())
}

fn settings(req: &Request, cfg: &ImageConfig, meta: &Meta, image_yaml: &str) -> Result<Settings> {
    let name = req
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}-{}", meta.name, meta.buildid, req.arch));
    validate_name(&name)?;
    let architecture = match req.arch.as_str() {
        "x86_64" => ArchitectureValues::X8664,
        "aarch64" => ArchitectureValues::Arm64,
        a => bail!("{a}: AWS images are x86_64 or aarch64"),
    };
    let boot_mode = if req.arch == "x86_64" {
        let b = match (req.boot_mode, &cfg.aws_x86_boot_mode) {
            (Some(b), _) => b,
            (None, Some(s)) => BootMode::from_str(s, false).map_err(|_| {
                anyhow::anyhow!(
                    "{image_yaml}: aws-x86-boot-mode {s:?}: expected uefi-preferred, legacy-bios or uefi"
                )
            })?,
            (None, None) => BootMode::UefiPreferred,
        };
        b.ec2()
    } else {
        if req.boot_mode.is_some_and(|b| b != BootMode::Uefi) {
            bail!("--boot-mode: {} images boot with UEFI only", req.arch);
        }
        BootModeValues::Uefi
    };
    let (volume_type, from) = match (&req.volume_type, &cfg.aws_volume_type) {
        (Some(v), _) => (v.clone(), "--volume-type".to_string()),
        (None, Some(v)) => (v.clone(), format!("{image_yaml}: aws-volume-type")),
        (None, None) => ("gp3".to_string(), String::new()),
    };
    if !VOLUME_TYPES.contains(&volume_type.as_str()) {
        bail!(
            "{from} {volume_type:?}: not an EBS volume type ({})",
            VOLUME_TYPES.join(", ")
        );
    }
    Ok(Settings {
        description: format!("{} {} ({})", meta.name, meta.buildid, req.arch),
        tags: vec![
            ("Name".to_string(), name.clone()),
            (BUILD_TAG.to_string(), meta.buildid.clone()),
        ],
        name,
        architecture,
        boot_mode,
        volume_type: VolumeType::from(volume_type.as_str()),
        imds_v2_only: req.imds_v2_only.or(cfg.aws_imdsv2_only).unwrap_or(true),
    })
}

/// The vmdk to import: meta.json's `images.aws`, uncompressed, present.
fn vmdk<'a>(meta: &'a Meta, arch_dir: &Utf8Path, origin: &str) -> Result<&'a Artifact> {
    let art = meta.images.get(IMAGE_KEY).with_context(|| {
        format!("{origin}: the build has no aws image (make it with cosa-extend --platform aws)")
    })?;
    if art.uncompressed_sha256.is_some() || !art.path.ends_with(".vmdk") {
        bail!(
            "{origin}: images.aws ({}) is not an uncompressed vmdk; run cosa-extend decompress --artifact aws",
            art.path
        );
    }
    let p = arch_dir.join(&art.path);
    if !p.is_file() {
        bail!("{p}: missing (meta.json images.aws lists it)");
    }
    Ok(art)
}

/// Publish the build's aws image; every region's image, recorded in meta.json.
pub fn upload_aws(wd: &Workdir, req: &Request) -> Result<Uploaded> {
    crate::names::validate_arch(&req.arch)?;
    validate_region(&req.region)?;
    let mut copy_to: Vec<&str> = Vec::new();
    for r in &req.copy_to {
        validate_region(r)?;
        if r != &req.region && !copy_to.contains(&r.as_str()) {
            copy_to.push(r);
        }
    }
    let id = crate::image::build::resolve_build(wd, req.build.as_deref())?;
    let arch_dir = wd.build_arch_dir(&id, &req.arch)?;
    let origin = wd.meta_path(&id, &req.arch)?;
    let meta = wd.read_meta(&id, &req.arch)?;
    let art = vmdk(&meta, &arch_dir, origin.as_str())?.clone();
    let cfg = super::compress::build_image_config(wd, &arch_dir, &meta)?;
    let image_yaml = wd.config_dir().join("image.yaml");
    let s = settings(req, &cfg, &meta, image_yaml.as_str())?;
    let store = Store::open_with(
        &req.bucket,
        StoreOptions {
            endpoint_url: req.endpoint_url.clone(),
            ..StoreOptions::default()
        },
    )?;
    let Location::S3 { bucket, prefix } = store.location.clone() else {
        bail!("--bucket {}: not an s3:// URL", req.bucket);
    };
    let vmdk_path = arch_dir.join(&art.path);
    let job = Job {
        wd,
        build: &id,
        req,
        s: &s,
        art: &art,
        vmdk: &vmdk_path,
        bucket: &bucket,
        prefix: &prefix,
        known: amis::read(&meta, origin.as_str())?,
    };
    let amis = crate::store::block_on(async {
        let client = store.connect().await?;
        client.check_access().await?;
        job.run(&client, &copy_to).await
    })?;
    Ok(Uploaded { build: id, amis })
}

struct Job<'a> {
    wd: &'a Workdir,
    build: &'a str,
    req: &'a Request,
    s: &'a Settings,
    art: &'a Artifact,
    vmdk: &'a Utf8Path,
    bucket: &'a str,
    prefix: &'a str,
    /// meta.json's records when we started.
    known: Vec<Ami>,
}

impl Job<'_> {
    async fn run(&self, client: &Client, copy_to: &[&str]) -> Result<Vec<Ami>> {
        let sdk = crate::store::awsconfig::load(self.req.endpoint_url.as_deref()).await;
        let primary = Ec2::new(&sdk, &self.req.region);
        let first = self.primary(&primary, client).await?;
        self.finish(&primary, &first).await?;
        let mut done = vec![first.clone()];
        let mut failed = Vec::new();
        for r in copy_to {
            let ec2 = Ec2::new(&sdk, r);
            let res = async {
                let ami = self.copy(&ec2, &first).await?;
                self.finish(&ec2, &ami).await?;
                anyhow::Ok(ami)
            }
            .await;
            match res {
                Ok(ami) => done.push(ami),
                Err(e) => {
                    tracing::debug!("{r}: {e:?}");
                    failed.push(format!("{e:#}"));
                }
            }
        }
        if !failed.is_empty() {
            let ok: Vec<&str> = done.iter().map(|a| a.name.as_str()).collect();
            bail!(
                "{} of {} regions failed (meta.json records {}): {}",
                failed.len(),
                copy_to.len() + 1,
                ok.join(", "),
                failed.join("; ")
            );
        }
        Ok(done)
    }

    fn timeouts(&self) -> (Duration, Duration) {
        (self.req.import_timeout, self.req.poll_interval)
    }

    /// meta.json's record of `region` when it names `image`, else one from the image.
    fn ami_of(&self, region: &str, image: &str, snapshot: Option<String>) -> Result<Ami> {
        if let Some(a) = self
            .known
            .iter()
            .find(|a| a.name == region && a.hvm == image)
        {
            return Ok(a.clone());
        }
        let snapshot =
            snapshot.with_context(|| format!("EC2 {region} image {image}: no root snapshot"))?;
        Ok(Ami {
            name: region.to_string(),
            hvm: image.to_string(),
            snapshot,
        })
    }

    /// Tag, publish, record.
    async fn finish(&self, ec2: &Ec2, ami: &Ami) -> Result<()> {
        ec2.tag(&[ami.hvm.as_str(), ami.snapshot.as_str()], &self.s.tags)
            .await?;
        if self.req.public {
            ec2.make_public(&ami.hvm, &ami.snapshot).await?;
        }
        amis::record(self.wd, self.build, &self.req.arch, ami.clone())?;
        tracing::info!("{}: {} (snapshot {})", ami.name, ami.hvm, ami.snapshot);
        Ok(())
    }

    /// The image in the primary region: an existing one of the name, else registered
    /// from the snapshot.
    async fn primary(&self, ec2: &Ec2, client: &Client) -> Result<Ami> {
        let (timeout, poll) = self.timeouts();
        let name = &self.s.name;
        if let Some(img) = ec2.images_named(name).await?.first() {
            let id = img
                .image_id()
                .context("DescribeImages: an image without ID")?;
            tracing::info!("{}: image {id} is named {name}; reusing it", ec2.region);
            let img = ec2.wait_available(id, timeout, poll).await?;
            return self.ami_of(&ec2.region, id, root_snapshot(&img));
        }
        let snapshot = self.snapshot(ec2, client).await?;
        let image = ec2
            .register(&Registration {
                name,
                description: &self.s.description,
                snapshot: &snapshot,
                architecture: self.s.architecture.clone(),
                boot_mode: self.s.boot_mode.clone(),
                volume_type: self.s.volume_type.clone(),
                imds_v2_only: self.s.imds_v2_only,
            })
            .await?;
        // Tagged at once: the name already makes it findable, the tag says whose it is.
        ec2.tag(&[image.as_str()], &self.s.tags).await?;
        ec2.wait_available(&image, timeout, poll).await?;
        Ok(Ami {
            name: ec2.region.clone(),
            hvm: image,
            snapshot,
        })
    }

    /// The imported snapshot: a completed one of the name, else a running or
    /// completed import's, else a new import's.
    async fn snapshot(&self, ec2: &Ec2, client: &Client) -> Result<String> {
        let (timeout, poll) = self.timeouts();
        let name = &self.s.name;
        if let Some(s) = ec2.snapshot_named(name).await? {
            tracing::info!("{}: snapshot {s} is tagged {name}; reusing it", ec2.region);
            return Ok(s);
        }
        let task = ec2
            .import_tasks(name)
            .await?
            .into_iter()
            .find(|t| !matches!(t.state, ImportState::Failed { .. }));
        let task = match task {
            Some(t) => {
                tracing::info!("{}: reusing import task {}", ec2.region, t.id);
                t.id
            }
            None => {
                let key = self.upload(client).await?;
                ec2.import_snapshot(name, self.bucket, &key, &self.s.tags)
                    .await?
            }
        };
        let snapshot = ec2.wait_import(&task, timeout, poll).await?;
        ec2.tag(&[snapshot.as_str()], &self.s.tags).await?;
        Ok(snapshot)
    }

    /// Upload the vmdk unless the bucket has it with the same sha256; its full key.
    async fn upload(&self, client: &Client) -> Result<String> {
        let file = self.art.path.as_str();
        let same = client.head(file).await?.is_some_and(|h| {
            h.sha256.as_deref() == Some(self.art.sha256.as_str())
                && self.art.size.is_none_or(|n| n == h.size)
        });
        if same {
            tracing::info!(
                "{}: already there with the same sha256",
                client.describe(file)
            );
        } else {
            tracing::info!("uploading {} to {}", self.vmdk, client.describe(file));
            client
                .put_file(
                    file,
                    self.vmdk,
                    &PutMeta::artifact(file, &self.art.sha256, None),
                )
                .await?;
        }
        Ok(if self.prefix.is_empty() {
            file.to_string()
        } else {
            format!("{}/{file}", self.prefix)
        })
    }

    /// The image in another region: an existing one of the name, else a copy.
    async fn copy(&self, ec2: &Ec2, first: &Ami) -> Result<Ami> {
        let (timeout, poll) = self.timeouts();
        let name = &self.s.name;
        let id = match ec2.images_named(name).await?.first() {
            Some(img) => {
                let id = img
                    .image_id()
                    .context("DescribeImages: an image without ID")?;
                tracing::info!("{}: image {id} is named {name}; reusing it", ec2.region);
                id.to_string()
            }
            None => {
                ec2.copy_from(&first.name, &first.hvm, name, &self.s.description)
                    .await?
            }
        };
        let img = ec2.wait_available(&id, timeout, poll).await?;
        self.ami_of(&ec2.region, &id, root_snapshot(&img))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_regions() {
        assert!(validate_name("example-os-1.20261126.0-x86_64").is_ok());
        assert!(validate_name("ab").is_err());
        assert!(validate_name("a*b").is_err());
        assert!(validate_name(&"a".repeat(129)).is_err());
        assert!(validate_region("eu-west-1").is_ok());
        assert!(validate_region("eu west").is_err());
        assert!(validate_region("").is_err());
    }
}
