//! The `cosa-extend` command line.

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use super::live::RootfsType;
use super::{compress, upload_aws};
use crate::cli::{Command, GlobalArgs, Outcome};
use crate::image::config::Compressor;
use crate::names::{host_arch, validate_arch};

/// Make a build's platform images (every coreos-assembler platform, the live ISO and
/// PXE files) from its qemu disk, and compress or decompress its images.
#[derive(Parser, Debug)]
#[command(
    name = "cosa-extend",
    version,
    about,
    long_about = None,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Sub>,
    #[command(flatten)]
    pub extend: ExtendArgs,
}

/// Options for making platform images.
#[derive(clap::Args, Debug, Clone)]
pub struct ExtendArgs {
    /// The build (default: builds/latest).
    #[arg(long, value_name = "ID|latest")]
    pub build: Option<String>,
    /// The architecture of the build.
    #[arg(long, default_value = host_arch())]
    pub arch: String,
    /// Platforms to make (repeatable or comma-separated): aliyun, applehv, aws, azure,
    /// azurestack, digitalocean, exoscale, gcp, hetzner, hyperv, ibmcloud, kubevirt,
    /// metal, metal4k, nutanix, openstack, oraclecloud, proxmoxve, qemu, vultr,
    /// vmware, virtualbox, live, or all.
    #[arg(long = "platform", value_delimiter = ',', required = true)]
    pub platforms: Vec<String>,
    /// Rebuild images meta.json already lists.
    #[arg(long)]
    pub force: bool,
    /// The live root filesystem type.
    #[arg(long, value_enum, default_value = "squashfs")]
    pub live_rootfs: RootfsType,
}

#[derive(Subcommand, Debug)]
pub enum Sub {
    /// Compress a build's images (coreos-assembler's `cosa compress`).
    Compress(CompressArgs),
    /// Decompress a build's compressed images.
    #[command(alias = "uncompress")]
    Decompress(DecompressArgs),
    /// Publish the build's aws image as AMIs and record them in meta.json's `amis`.
    UploadAws(UploadAwsArgs),
}

/// Options of `upload-aws`.
#[derive(clap::Args, Debug, Clone)]
pub struct UploadAwsArgs {
    /// The build (default: builds/latest).
    #[arg(long, value_name = "ID|latest")]
    pub build: Option<String>,
    /// The architecture of the build.
    #[arg(long, default_value = host_arch())]
    pub arch: String,
    /// Where the vmdk is uploaded for the import: s3://BUCKET[/PREFIX].
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub bucket: String,
    /// The region the image is imported and registered in.
    #[arg(long)]
    pub region: String,
    /// Another region to copy the image to (repeatable or comma-separated).
    #[arg(long = "copy-to-region", value_name = "REGION", value_delimiter = ',')]
    pub copy_to: Vec<String>,
    /// Let everyone launch the images.
    #[arg(long)]
    pub public: bool,
    /// The image name (default: <name>-<build>-<arch>).
    #[arg(long)]
    pub name: Option<String>,
    /// x86_64 boot mode (default: image.yaml aws-x86-boot-mode, else uefi-preferred).
    #[arg(long, value_enum)]
    pub boot_mode: Option<upload_aws::BootMode>,
    /// Require IMDSv2 on instances (default: image.yaml aws-imdsv2-only, else true).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub imds_v2_only: Option<bool>,
    /// EBS volume type of the root device (default: image.yaml aws-volume-type, else gp3).
    #[arg(long)]
    pub volume_type: Option<String>,
    /// Endpoint for S3 and EC2 (default: $AWS_ENDPOINT_URL, $AWS_ENDPOINT_URL_S3/_EC2, else AWS).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Seconds to wait for the snapshot import (and for each image to be available).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600.0, value_parser = seconds)]
    pub import_timeout: f64,
    /// Seconds between status requests while waiting.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = seconds)]
    pub poll_interval: f64,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=7.0 * 86400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: expected a number of seconds (0 to 604800)")),
    }
}

/// Options of `compress`.
#[derive(clap::Args, Debug, Clone)]
pub struct CompressArgs {
    /// The build (default: builds/latest).
    #[arg(long, value_name = "ID|latest")]
    pub build: Option<String>,
    /// The architecture of the build.
    #[arg(long, default_value = host_arch())]
    pub arch: String,
    /// The compressor (default: image.yaml's platform-compressor / compressor, else gzip).
    #[arg(long, value_enum)]
    pub compressor: Option<CompressorArg>,
    /// Only this image (a meta.json images key; repeatable).
    #[arg(long = "artifact")]
    pub artifacts: Vec<String>,
    /// The fastest level of the compressor (gzip -1, xz -0, zstd -1).
    #[arg(long)]
    pub fast: bool,
}

/// Options of `decompress`.
#[derive(clap::Args, Debug, Clone)]
pub struct DecompressArgs {
    /// The build (default: builds/latest).
    #[arg(long, value_name = "ID|latest")]
    pub build: Option<String>,
    /// The architecture of the build.
    #[arg(long, default_value = host_arch())]
    pub arch: String,
    /// Only this image (a meta.json images key; repeatable).
    #[arg(long = "artifact")]
    pub artifacts: Vec<String>,
}

/// `--compressor` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressorArg {
    Xz,
    Gzip,
    Zstd,
}

impl From<CompressorArg> for Compressor {
    fn from(c: CompressorArg) -> Compressor {
        match c {
            CompressorArg::Xz => Compressor::Xz,
            CompressorArg::Gzip => Compressor::Gzip,
            CompressorArg::Zstd => Compressor::Zstd,
        }
    }
}

impl Command for Args {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }

    fn run(self) -> Result<Outcome> {
        if self.command.is_some() {
            let e = &self.extend;
            if !e.platforms.is_empty() || e.build.is_some() || e.force {
                anyhow::bail!(
                    "--platform, --build and --force go after the subcommand (cosa-extend compress --build ID)"
                );
            }
        }
        let wd = self.global.open_workdir()?;
        let pairs: Vec<(String, String)> = match self.command {
            Some(Sub::Compress(c)) => {
                validate_arch(&c.arch)?;
                let done = compress::compress(
                    &wd,
                    &compress::Request {
                        build: c.build,
                        arch: c.arch,
                        compressor: c.compressor.map(Into::into),
                        artifacts: c.artifacts,
                        fast: c.fast,
                    },
                )?;
                done.into_iter().map(|d| (d.key, d.path)).collect()
            }
            Some(Sub::Decompress(d)) => {
                validate_arch(&d.arch)?;
                let done = compress::decompress(
                    &wd,
                    &compress::Request {
                        build: d.build,
                        arch: d.arch,
                        compressor: None,
                        artifacts: d.artifacts,
                        fast: false,
                    },
                )?;
                done.into_iter().map(|d| (d.key, d.path)).collect()
            }
            Some(Sub::UploadAws(u)) => {
                validate_arch(&u.arch)?;
                let up = upload_aws::upload_aws(
                    &wd,
                    &upload_aws::Request {
                        build: u.build,
                        arch: u.arch,
                        bucket: u.bucket,
                        region: u.region,
                        copy_to: u.copy_to,
                        public: u.public,
                        name: u.name,
                        boot_mode: u.boot_mode,
                        imds_v2_only: u.imds_v2_only,
                        volume_type: u.volume_type,
                        endpoint_url: u.endpoint_url,
                        import_timeout: Duration::from_secs_f64(u.import_timeout),
                        poll_interval: Duration::from_secs_f64(u.poll_interval),
                    },
                )?;
                up.amis
                    .into_iter()
                    .map(|a| (format!("ami-{}", a.name), a.hvm))
                    .collect()
            }
            None => {
                let a = self.extend;
                let made = super::extend(
                    &wd,
                    &super::Request {
                        build: a.build,
                        arch: a.arch,
                        platforms: a.platforms,
                        force: a.force,
                        live_rootfs: a.live_rootfs,
                    },
                )?;
                made.made
                    .into_iter()
                    .map(|m| (m.key, m.path.to_string()))
                    .collect()
            }
        };
        for (k, v) in &pairs {
            println!("{k}={v}");
        }
        let outputs: Vec<(&str, String)> =
            pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        crate::ci::github_output(&outputs)?;
        Ok(Outcome::Success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn parses() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "cosa-extend",
            "--platform",
            "aws,gcp",
            "--platform",
            "live",
            "--force",
        ])
        .unwrap();
        assert_eq!(a.extend.platforms, ["aws", "gcp", "live"]);
        assert!(a.command.is_none());
        let a = Args::try_parse_from([
            "cosa-extend",
            "compress",
            "--compressor",
            "zstd",
            "--artifact",
            "qemu",
        ])
        .unwrap();
        match a.command {
            Some(Sub::Compress(c)) => {
                assert_eq!(c.compressor, Some(CompressorArg::Zstd));
                assert_eq!(c.artifacts, ["qemu"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Args::try_parse_from(["cosa-extend", "uncompress"])
                .unwrap()
                .command,
            Some(Sub::Decompress(_))
        ));
        let a = Args::try_parse_from([
            "cosa-extend",
            "upload-aws",
            "--bucket",
            "s3://b/p",
            "--region",
            "us-east-1",
            "--copy-to-region",
            "eu-west-1,us-west-2",
            "--imds-v2-only",
            "--boot-mode",
            "legacy-bios",
            "--poll-interval",
            "0.05",
        ])
        .unwrap();
        match a.command {
            Some(Sub::UploadAws(u)) => {
                assert_eq!(u.copy_to, ["eu-west-1", "us-west-2"]);
                assert_eq!(u.imds_v2_only, Some(true));
                assert_eq!(u.boot_mode, Some(upload_aws::BootMode::LegacyBios));
                assert_eq!(u.poll_interval, 0.05);
                assert_eq!(u.import_timeout, 3600.0);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            &["--imds-v2-only=maybe"][..],
            &["--poll-interval", "-1"],
            &["--boot-mode", "bios"],
        ] {
            let mut v = vec![
                "cosa-extend",
                "upload-aws",
                "--bucket",
                "s3://b",
                "--region",
                "r",
            ];
            v.extend_from_slice(bad);
            assert!(Args::try_parse_from(v).is_err(), "{bad:?}");
        }
        // --platform is required without a subcommand, refused with one.
        assert!(Args::try_parse_from(["cosa-extend"]).is_err());
        let a = Args::try_parse_from(["cosa-extend", "--platform", "aws", "compress"]).unwrap();
        assert!(a.run().is_err());
    }
}
