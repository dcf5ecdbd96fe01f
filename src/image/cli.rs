//! The `cosa-image` command line.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use super::build::{self, Platform, Request};
use super::qemu::{self, Accel, Firmware, Vm};
use crate::cli::{Command, GlobalArgs, Outcome};
use crate::names::{host_arch, validate_arch};

/// Make bootable disk images (qemu, metal, metal4k) from a build, without root, a VM or KVM.
#[derive(Parser, Debug)]
#[command(name = "cosa-image", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Sub>,
    #[command(flatten)]
    pub build: BuildArgs,
}

/// Options for making images.
#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
    /// The build (default: builds/latest).
    #[arg(long, value_name = "ID|latest")]
    pub build: Option<String>,
    /// The architecture of the build.
    #[arg(long, default_value = host_arch())]
    pub arch: String,
    /// Platforms to make (repeatable or comma-separated; default: qemu).
    #[arg(long = "platform", value_enum, value_delimiter = ',')]
    pub platforms: Vec<Platform>,
    /// Rebuild images meta.json already lists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum Sub {
    /// Boot a build's image under QEMU with a serial console (like `cosa run`).
    Run(RunArgs),
}

/// Options of `cosa-image run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The build (default: builds/latest).
    #[arg(long, value_name = "ID|latest")]
    pub build: Option<String>,
    /// The architecture of the build (only x86_64 images can be run).
    #[arg(long, default_value = host_arch())]
    pub arch: String,
    /// Which image to boot.
    #[arg(long, value_enum, default_value = "qemu")]
    pub platform: Platform,
    /// Boot with UEFI firmware (OVMF) instead of BIOS (SeaBIOS).
    #[arg(long)]
    pub uefi: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Acceleration: KVM when it works (auto), or forced.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Exit QEMU instead of rebooting the guest.
    #[arg(long)]
    pub no_reboot: bool,
    /// Extra QEMU arguments (after `--`).
    #[arg(last = true)]
    pub qemu_args: Vec<String>,
}

impl Command for Args {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }

    fn run(self) -> Result<Outcome> {
        match self.command {
            Some(Sub::Run(r)) => {
                let b = &self.build;
                if b.build.is_some() || !b.platforms.is_empty() || b.force {
                    bail!(
                        "--build, --platform and --force go after `run` (cosa-image run --build ID)"
                    );
                }
                run_vm(&self.global, &r)
            }
            None => make(&self.global, &self.build),
        }
    }
}

fn make(g: &GlobalArgs, a: &BuildArgs) -> Result<Outcome> {
    validate_arch(&a.arch)?;
    let wd = g.open_workdir()?;
    let platforms = if a.platforms.is_empty() {
        vec![Platform::Qemu]
    } else {
        a.platforms.clone()
    };
    let out = build::build(
        &wd,
        &Request {
            build: a.build.clone(),
            arch: a.arch.clone(),
            platforms,
            force: a.force,
        },
    )?;
    for b in &out.built {
        println!("{}={}", b.platform.key(), b.path);
    }
    let pairs: Vec<(&str, String)> = out
        .built
        .iter()
        .map(|b| (b.platform.key(), b.artifact.path.clone()))
        .collect();
    crate::ci::github_output(&pairs)?;
    Ok(Outcome::Success)
}

fn run_vm(g: &GlobalArgs, r: &RunArgs) -> Result<Outcome> {
    validate_arch(&r.arch)?;
    if r.arch != "x86_64" {
        bail!("cosa-image run boots x86_64 images only (not {})", r.arch);
    }
    let wd = g.open_workdir()?;
    let id = build::resolve_build(&wd, r.build.as_deref())?;
    let meta = wd.read_meta(&id, &r.arch)?;
    let art = meta.images.get(r.platform.key()).with_context(|| {
        format!(
            "build {id} has no {} image; make it with cosa-image --platform {}",
            r.platform.key(),
            r.platform.key()
        )
    })?;
    let disk = wd.build_arch_dir(&id, &r.arch)?.join(&art.path);
    if !disk.is_file() {
        bail!("{disk} (images.{}) does not exist", r.platform.key());
    }
    if r.platform == Platform::Metal4k && !r.uefi {
        bail!("metal4k images have no BIOS bootloader (4096-byte sectors): add --uefi");
    }
    let kvm = match r.accel {
        Accel::Kvm => true,
        Accel::Tcg => false,
        Accel::Auto => qemu::kvm_works(),
    };
    qemu::run(
        &Vm {
            disk,
            format: if r.platform == Platform::Qemu {
                "qcow2"
            } else {
                "raw"
            },
            sector: r.platform.sector_size(),
            firmware: if r.uefi {
                Firmware::Uefi
            } else {
                Firmware::Bios
            },
            memory_mib: r.memory,
            cpus: r.cpus,
            kvm,
            no_reboot: r.no_reboot,
            extra: r.qemu_args.clone(),
        },
        r.accel == Accel::Auto,
    )?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let a = Args::try_parse_from([
            "cosa-image",
            "--platform",
            "qemu,metal",
            "--platform",
            "metal4k",
            "--force",
        ])
        .unwrap();
        assert_eq!(
            a.build.platforms,
            [Platform::Qemu, Platform::Metal, Platform::Metal4k]
        );
        assert!(a.command.is_none());
        let a = Args::try_parse_from([
            "cosa-image",
            "run",
            "--uefi",
            "--platform",
            "metal",
            "--",
            "-s",
        ])
        .unwrap();
        match a.command {
            Some(Sub::Run(r)) => {
                assert!(r.uefi);
                assert_eq!(r.qemu_args, ["-s"]);
            }
            None => panic!("no subcommand"),
        }
        assert!(Args::try_parse_from(["cosa-image", "--platform", "aws"]).is_err());
    }
}
