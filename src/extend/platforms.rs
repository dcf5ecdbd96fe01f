//! The platform table: every platform `cosa-extend` makes, in one place.
//!
//! Each row says what coreos-assembler says for that platform (its `cosa osbuild
//! --supported-platforms` list and `cmd-buildextend-*` history): the meta.json
//! `images` key (also the `--platform` name and the platform part of the file name),
//! the file suffix, how the file is made, the `ignition.platform.id` kernel argument,
//! and whether `cosa compress` leaves the file alone (`skip-compression`).
//!
//! Adding a platform is adding a row (and, when it needs a new file format, an
//! [`Output`] variant with its writer in [`super::derive`]).
//!
//! Console settings ([`builtin_boot`]): when the composed tree ships
//! `/usr/share/coreos-assembler/platforms.json` (Fedora CoreOS does, generated from
//! its `platforms.yaml`), its entry for the arch and `ignition.platform.id` decides the
//! platform's extra kernel arguments and GRUB console commands, as coreos-assembler's
//! `coreos.platform` osbuild stage does; a platform the file does not list gets none.
//! Without that file, the built-in table below is used: the values Fedora CoreOS
//! ships (serial console `ttyS0` at 115200 plus the graphical console on the clouds
//! that show either; GRUB on serial and console where the platform has a serial
//! console; nothing for azurestack, digitalocean, exoscale, hetzner, hyperv, nutanix,
//! oraclecloud, proxmoxve, vultr and metal, where the kernel's and GRUB's defaults
//! apply).

use anyhow::{Result, bail};

use crate::image::Platform as ImagePlatform;

/// GiB.
const GIB: u64 = 1 << 30;

/// How a platform's file is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Made by `cosa-image` (a whole disk built for it: own size, own sector size).
    Native(ImagePlatform),
    /// The base disk with the platform's kernel arguments, converted by `qemu-img
    /// convert -O <format> -o <options>` (`-c`: qcow2 with compressed clusters).
    Disk {
        format: &'static str,
        options: &'static str,
        compressed: bool,
    },
    /// GCP: a gzip'd tar (GNU `oldgnu` format, sparse) holding `disk.raw`.
    GcpTar,
    /// KubeVirt: an OCI image archive whose one layer holds the qcow2 under `disk/`.
    KubevirtOci,
    /// An OVA: a ustar tar of an OVF descriptor and a streamOptimized VMDK.
    Ova(OvaFlavor),
    /// The live ISO and the PXE kernel, initramfs and rootfs.
    Live,
}

/// The OVF dialect of an OVA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OvaFlavor {
    Vmware,
    Virtualbox,
}

/// One platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformSpec {
    /// `--platform` name, meta.json `images` key and file name part.
    pub name: &'static str,
    /// File suffix (`qcow2`, `vmdk`, `tar.gz`, ...).
    pub ext: &'static str,
    /// `ignition.platform.id`.
    pub ignition_id: &'static str,
    pub output: Output,
    /// `skip-compression: true` in meta.json.
    pub skip_compression: bool,
    /// Virtual disk size, when the platform fixes it (else image.yaml `size`).
    pub disk_size: Option<u64>,
}

const QCOW2: Output = Output::Disk {
    format: "qcow2",
    options: "compat=1.1",
    compressed: false,
};
const RAW: Output = Output::Disk {
    format: "raw",
    options: "",
    compressed: false,
};
/// VMDK as coreos-assembler makes it for AWS and VMware: stream-optimized (compressed
/// grains, no holes), LSI Logic adapter, version-6 header compatibility.
pub const VMDK_AWS_OPTIONS: &str = "adapter_type=lsilogic,subformat=streamOptimized,compat6";
/// VirtualBox reads plain stream-optimized VMDK.
pub const VMDK_VIRTUALBOX_OPTIONS: &str = "subformat=streamOptimized";

const fn row(
    name: &'static str,
    ext: &'static str,
    ignition_id: &'static str,
    output: Output,
    skip_compression: bool,
) -> PlatformSpec {
    PlatformSpec {
        name,
        ext,
        ignition_id,
        output,
        skip_compression,
        disk_size: None,
    }
}

/// Every platform, in `--platform all` order (the natively built disks first: the
/// others derive from the `qemu` disk).
pub const PLATFORMS: &[PlatformSpec] = &[
    row(
        "qemu",
        "qcow2",
        "qemu",
        Output::Native(ImagePlatform::Qemu),
        false,
    ),
    row(
        "metal",
        "raw",
        "metal",
        Output::Native(ImagePlatform::Metal),
        false,
    ),
    row(
        "metal4k",
        "raw",
        "metal",
        Output::Native(ImagePlatform::Metal4k),
        false,
    ),
    row("aliyun", "qcow2", "aliyun", QCOW2, false),
    row("applehv", "raw", "applehv", RAW, false),
    row(
        "aws",
        "vmdk",
        "aws",
        Output::Disk {
            format: "vmdk",
            options: VMDK_AWS_OPTIONS,
            compressed: false,
        },
        false,
    ),
    row(
        "azure",
        "vhd",
        "azure",
        Output::Disk {
            format: "vpc",
            options: "subformat=fixed,force_size=on",
            compressed: false,
        },
        false,
    ),
    row(
        "azurestack",
        "vhd",
        "azurestack",
        Output::Disk {
            format: "vpc",
            options: "subformat=fixed,force_size=on",
            compressed: false,
        },
        false,
    ),
    row("digitalocean", "qcow2", "digitalocean", QCOW2, false),
    row("exoscale", "qcow2", "exoscale", QCOW2, false),
    row("gcp", "tar.gz", "gcp", Output::GcpTar, true),
    row("hetzner", "raw", "hetzner", RAW, false),
    row(
        "hyperv",
        "vhdx",
        "hyperv",
        Output::Disk {
            format: "vhdx",
            options: "",
            compressed: false,
        },
        false,
    ),
    PlatformSpec {
        disk_size: Some(100 * GIB),
        ..row("ibmcloud", "qcow2", "ibmcloud", QCOW2, false)
    },
    row(
        "kubevirt",
        "ociarchive",
        "kubevirt",
        Output::KubevirtOci,
        true,
    ),
    row(
        "nutanix",
        "qcow2",
        "nutanix",
        Output::Disk {
            format: "qcow2",
            options: "compat=1.1",
            compressed: true,
        },
        true,
    ),
    row("openstack", "qcow2", "openstack", QCOW2, false),
    row("oraclecloud", "qcow2", "oraclecloud", QCOW2, false),
    row("proxmoxve", "qcow2", "proxmoxve", QCOW2, false),
    row("vultr", "raw", "vultr", RAW, false),
    row(
        "vmware",
        "ova",
        "vmware",
        Output::Ova(OvaFlavor::Vmware),
        true,
    ),
    row(
        "virtualbox",
        "ova",
        "virtualbox",
        Output::Ova(OvaFlavor::Virtualbox),
        true,
    ),
    row("live", "iso", "metal", Output::Live, true),
];

/// coreos-assembler platforms tied to hardware or firmware this cannot make or test.
pub const NOT_SUPPORTED: &[(&str, &str)] = &[
    (
        "qemu-secex",
        "IBM Secure Execution images are s390x only and need genprotimg and the host key \
         of the target machine",
    ),
    (
        "nvidiabluefield",
        "BlueField BFB bundles need NVIDIA's bfb tooling and firmware for the DPU (aarch64)",
    ),
    (
        "powervs",
        "PowerVS images are ppc64le only (PReP boot partition, petitboot), which cosa-image \
         does not lay out",
    ),
];

/// The meta.json keys of the live artifacts, in the order they are registered.
pub const LIVE_KEYS: [&str; 4] = ["live-iso", "live-kernel", "live-initramfs", "live-rootfs"];

/// Look a platform up by name; unknown names are errors listing the known ones.
pub fn lookup(name: &str) -> Result<&'static PlatformSpec> {
    if let Some(p) = PLATFORMS.iter().find(|p| p.name == name) {
        return Ok(p);
    }
    if let Some((_, why)) = NOT_SUPPORTED.iter().find(|(n, _)| *n == name) {
        bail!("platform {name} is not supported: {why}");
    }
    bail!(
        "unknown platform {name:?}; known platforms: {}, all",
        names().join(", ")
    )
}

/// Every platform name, in table order.
pub fn names() -> Vec<&'static str> {
    PLATFORMS.iter().map(|p| p.name).collect()
}

/// Resolve `--platform` values (`all` means every platform), without duplicates, in
/// table order.
pub fn resolve(names_given: &[String]) -> Result<Vec<&'static PlatformSpec>> {
    if names_given.is_empty() {
        bail!("no platform given (--platform NAME, or --platform all)");
    }
    let mut want = Vec::new();
    for n in names_given {
        let n = n.trim();
        if n == "all" {
            want.extend(PLATFORMS.iter().map(|p| p.name));
        } else {
            want.push(lookup(n)?.name);
        }
    }
    Ok(PLATFORMS
        .iter()
        .filter(|p| want.contains(&p.name))
        .collect())
}

/// Whether `cosa compress` leaves an image key alone whatever its meta.json entry
/// says: the platforms marked so above, the live artifacts, and the keys
/// coreos-assembler never compresses (the OSTree archive, legacy installer files).
pub fn never_compressed(key: &str) -> bool {
    PLATFORMS
        .iter()
        .any(|p| p.name == key && p.skip_compression)
        || LIVE_KEYS.contains(&key)
        || matches!(
            key,
            "ostree"
                | "oci-manifest"
                | "iso"
                | "kernel"
                | "initramfs"
                | "ignition-gpg-key"
                | "extensions-container"
                | "legacy-oscontainer"
                | "powervs"
                | "nvidiabluefield"
        )
}

/// Kernel arguments and GRUB console commands of one arch/platform pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinBoot {
    pub kernel_arguments: &'static [&'static str],
    pub grub_commands: &'static [&'static str],
}

const SERIAL_GRUB: &[&str] = &[
    "serial --speed=115200",
    "terminal_input serial console",
    "terminal_output serial console",
];
const TTY0_TTYS0: &[&str] = &["console=tty0", "console=ttyS0,115200n8"];
const TTYS0_TTY0: &[&str] = &["console=ttyS0,115200n8", "console=tty0"];

/// Fedora CoreOS's console settings (its `platforms.yaml`), per (arch, ignition
/// platform ID), used when the tree has no platforms.json.
const BUILTIN: &[(&str, &str, BuiltinBoot)] = &[
    (
        "x86_64",
        "applehv",
        BuiltinBoot {
            kernel_arguments: &["console=tty0", "console=hvc0"],
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "x86_64",
        "aws",
        BuiltinBoot {
            kernel_arguments: TTY0_TTYS0,
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "x86_64",
        "azure",
        // GRUB writes to the console only: Azure copies it to the serial log, and
        // serial output as well would show every line twice.
        BuiltinBoot {
            kernel_arguments: TTY0_TTYS0,
            grub_commands: &[],
        },
    ),
    (
        "x86_64",
        "gcp",
        BuiltinBoot {
            kernel_arguments: TTY0_TTYS0,
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "x86_64",
        "ibmcloud",
        BuiltinBoot {
            kernel_arguments: TTY0_TTYS0,
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "x86_64",
        "kubevirt",
        BuiltinBoot {
            kernel_arguments: TTYS0_TTY0,
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "x86_64",
        "openstack",
        BuiltinBoot {
            kernel_arguments: TTYS0_TTY0,
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "x86_64",
        "qemu",
        BuiltinBoot {
            kernel_arguments: TTY0_TTYS0,
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "x86_64",
        "virtualbox",
        BuiltinBoot {
            kernel_arguments: TTYS0_TTY0,
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "x86_64",
        "vmware",
        BuiltinBoot {
            kernel_arguments: TTYS0_TTY0,
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "aarch64",
        "applehv",
        BuiltinBoot {
            kernel_arguments: &["console=tty0", "console=hvc0"],
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "aarch64",
        "aws",
        BuiltinBoot {
            kernel_arguments: &["console=ttyS0,115200n8"],
            grub_commands: &[
                "serial --speed=115200 efi0",
                "terminal_input serial_efi0",
                "terminal_output serial_efi0",
            ],
        },
    ),
    (
        "aarch64",
        "azure",
        BuiltinBoot {
            kernel_arguments: &["console=tty0", "console=ttyAMA0,115200n8"],
            grub_commands: &[],
        },
    ),
    (
        "aarch64",
        "openstack",
        BuiltinBoot {
            kernel_arguments: &["console=ttyAMA0,115200n8", "console=tty0"],
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "aarch64",
        "qemu",
        BuiltinBoot {
            kernel_arguments: &[],
            grub_commands: SERIAL_GRUB,
        },
    ),
    (
        "riscv64",
        "qemu",
        BuiltinBoot {
            kernel_arguments: TTY0_TTYS0,
            grub_commands: SERIAL_GRUB,
        },
    ),
];

/// The built-in console settings of an arch and ignition platform ID (none: the
/// kernel's and GRUB's defaults).
pub fn builtin_boot(arch: &str, ignition_id: &str) -> Option<BuiltinBoot> {
    BUILTIN
        .iter()
        .find(|(a, p, _)| *a == arch && *p == ignition_id)
        .map(|(_, _, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for p in PLATFORMS {
            assert!(seen.insert(p.name), "{} twice", p.name);
            assert!(!p.ext.is_empty() && !p.ext.starts_with('.'), "{}", p.name);
            // The images keys coreos-assembler's schema defines.
            assert!(
                p.name == "live" || crate::names::validate_file_name(p.name).is_ok(),
                "{}",
                p.name
            );
            if let Output::Native(ip) = p.output {
                assert_eq!(ip.key(), p.name);
                assert_eq!(ip.ignition_id(), p.ignition_id);
                assert_eq!(ip.extension(), p.ext);
            }
        }
        for (n, _) in NOT_SUPPORTED {
            assert!(lookup(n).is_err());
        }
    }

    #[test]
    fn coreos_assembler_formats() {
        let aws = lookup("aws").unwrap();
        assert_eq!(
            aws.output,
            Output::Disk {
                format: "vmdk",
                options: "adapter_type=lsilogic,subformat=streamOptimized,compat6",
                compressed: false
            }
        );
        assert!(!aws.skip_compression);
        assert!(lookup("gcp").unwrap().skip_compression);
        assert_eq!(lookup("metal4k").unwrap().ignition_id, "metal");
        assert_eq!(lookup("live").unwrap().ignition_id, "metal");
        assert_eq!(lookup("ibmcloud").unwrap().disk_size, Some(100 << 30));
        assert!(never_compressed("live-iso") && never_compressed("ostree"));
        assert!(!never_compressed("qemu") && !never_compressed("azure"));
    }

    #[test]
    fn resolving_names() {
        let all = resolve(&["all".into()]).unwrap();
        assert_eq!(all.len(), PLATFORMS.len());
        let two = resolve(&["vmware".into(), "aws".into(), "aws".into()]).unwrap();
        let n: Vec<_> = two.iter().map(|p| p.name).collect();
        assert_eq!(n, ["aws", "vmware"]);
        let e = resolve(&["awss".into()]).unwrap_err().to_string();
        assert!(
            e.contains("awss") && e.contains("aliyun") && e.contains("vultr"),
            "{e}"
        );
        let e = resolve(&["powervs".into()]).unwrap_err().to_string();
        assert!(e.contains("ppc64le"), "{e}");
        assert!(resolve(&[]).is_err());
    }

    #[test]
    fn consoles() {
        let aws = builtin_boot("x86_64", "aws").unwrap();
        assert_eq!(
            aws.kernel_arguments,
            ["console=tty0", "console=ttyS0,115200n8"]
        );
        assert!(
            builtin_boot("x86_64", "azure")
                .unwrap()
                .grub_commands
                .is_empty()
        );
        assert!(builtin_boot("x86_64", "metal").is_none());
        assert!(builtin_boot("x86_64", "hetzner").is_none());
    }
}
