//! Partition layouts, per architecture, as coreos-assembler makes them
//! (`src/osbuild-manifests/coreos.osbuild.<arch>.mpp.yaml`).
//!
//! Every layout is GPT with the sentinel disk GUID `00000000-0000-4000-a000-000000000001`
//! (CoreOS randomises it on first boot), the first partition at 1 MiB, and `boot` and
//! `root` pinned to partitions 3 and 4 so that tools can find them by number:
//!
//! | arch | 1 | 2 | 3 | 4 |
//! |---|---|---|---|---|
//! | x86_64 | `BIOS-BOOT` 1 MiB | `EFI-SYSTEM` 127 MiB vfat | `boot` 384 MiB ext4 | `root` rest |
//! | aarch64 | `reserved` 1 MiB | `EFI-SYSTEM` 127 MiB vfat | `boot` 384 MiB ext4 | `root` rest |
//! | riscv64 | `reserved` 1 MiB | `EFI-SYSTEM` 127 MiB vfat | `boot` 384 MiB ext4 | `root` rest |
//!
//! The partition sizes are the same in bytes on 512- and 4096-byte-sector disks.
//! aarch64's 1 MiB `reserved` partition (Linux reserved type) keeps the numbering the
//! same as x86_64's where x86_64 has BIOS-BOOT.

use anyhow::{Result, bail};

pub const MIB: u64 = 1024 * 1024;

/// The disk GUID of every image (a sentinel that first boot replaces).
pub const DISK_GUID: &str = "00000000-0000-4000-a000-000000000001";
/// The `boot` filesystem UUID (replaced on first boot by CoreOS).
pub const BOOT_FS_UUID: &str = "96d15588-3596-4b3c-adca-a2ff7279ea63";
pub const BOOT_FS_LABEL: &str = "boot";
/// The `root` filesystem UUID (replaced on first boot by CoreOS).
pub const ROOT_FS_UUID: &str = "910678ff-f77e-4a7d-8d53-86f2ac47a823";
pub const ROOT_FS_LABEL: &str = "root";
/// The ESP's FAT volume ID and label.
pub const ESP_VOLID: &str = "7B7795E7";
pub const ESP_LABEL: &str = "EFI-SYSTEM";

pub mod types {
    pub const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
    pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    /// Extended boot loader partition (XBOOTLDR), what coreos-assembler uses for `boot`.
    pub const XBOOTLDR: &str = "BC13C2FF-59E6-4262-A352-B275FD6F7172";
    pub const LINUX_RESERVED: &str = "8DA63339-0007-60C0-C436-083AC8230908";
    pub const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
    pub const ROOT_AARCH64: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
    pub const ROOT_RISCV64: &str = "72EC70A6-CF74-40E6-BD49-4BDA08E8F224";
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// GRUB's core.img for BIOS boot (x86_64).
    BiosBoot,
    /// Reserved, left empty.
    Reserved,
    /// The EFI system partition (vfat).
    Esp,
    /// `/boot` (ext4).
    Boot,
    /// `/` (ext4 here).
    Root,
}

/// One partition of a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSpec {
    /// 1-based GPT partition number.
    pub number: u32,
    /// GPT partition name.
    pub name: &'static str,
    pub type_guid: &'static str,
    /// Size in bytes; `None` for the last partition, which takes the rest of the disk.
    pub size: Option<u64>,
    pub role: Role,
}

/// A disk layout for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub arch: String,
    pub parts: Vec<PartSpec>,
}

/// Sizes of the fixed partitions, in MiB.
pub const BIOS_BOOT_MIB: u64 = 1;
pub const RESERVED_MIB: u64 = 1;
pub const ESP_MIB: u64 = 127;
pub const BOOT_MIB: u64 = 384;
/// Where the first partition starts (and the alignment of every partition).
pub const FIRST_PART_OFFSET: u64 = MIB;
/// Room left at the end of the disk for the backup GPT (aligned down to a MiB).
pub const TAIL_RESERVE: u64 = MIB;

/// Everything on the disk but `root`, in MiB: partitions, the 1 MiB lead and the
/// backup GPT at the end. This is coreos-assembler's "513" of its metal size estimate.
pub const NONROOT_MIB: u64 = 1 + BIOS_BOOT_MIB + ESP_MIB + BOOT_MIB;

impl Layout {
    /// The layout for `arch` (coreos-assembler's basearch spelling).
    pub fn for_arch(arch: &str) -> Result<Layout> {
        let first = match arch {
            "x86_64" => PartSpec {
                number: 1,
                name: "BIOS-BOOT",
                type_guid: types::BIOS_BOOT,
                size: Some(BIOS_BOOT_MIB * MIB),
                role: Role::BiosBoot,
            },
            "aarch64" | "riscv64" => PartSpec {
                number: 1,
                name: "reserved",
                type_guid: types::LINUX_RESERVED,
                size: Some(RESERVED_MIB * MIB),
                role: Role::Reserved,
            },
            other => bail!(
                "no disk layout for arch {other} (supported: x86_64, aarch64, riscv64; \
                 ppc64le and s390x need PReP/zipl support that cosa-image does not have)"
            ),
        };
        let root_type = match arch {
            "x86_64" => types::ROOT_X86_64,
            "aarch64" => types::ROOT_AARCH64,
            _ => types::ROOT_RISCV64,
        };
        Ok(Layout {
            arch: arch.to_string(),
            parts: vec![
                first,
                PartSpec {
                    number: 2,
                    name: "EFI-SYSTEM",
                    type_guid: types::ESP,
                    size: Some(ESP_MIB * MIB),
                    role: Role::Esp,
                },
                PartSpec {
                    number: 3,
                    name: "boot",
                    type_guid: types::XBOOTLDR,
                    size: Some(BOOT_MIB * MIB),
                    role: Role::Boot,
                },
                PartSpec {
                    number: 4,
                    name: "root",
                    type_guid: root_type,
                    size: None,
                    role: Role::Root,
                },
            ],
        })
    }

    pub fn part(&self, role: Role) -> Option<&PartSpec> {
        self.parts.iter().find(|p| p.role == role)
    }

    /// Place the partitions on a disk of `disk_size` bytes: byte offsets and sizes,
    /// every partition aligned to 1 MiB. Fails when nothing is left for the last one.
    pub fn place(&self, disk_size: u64) -> Result<Vec<Placed>> {
        let mut out = Vec::new();
        let mut off = FIRST_PART_OFFSET;
        let end = (disk_size.saturating_sub(TAIL_RESERVE)) / MIB * MIB;
        for p in &self.parts {
            let size = match p.size {
                Some(s) => s,
                None => end.saturating_sub(off),
            };
            if size == 0 || off + size > end {
                bail!(
                    "a {} MiB disk has no room for partition {} ({}): at least {} MiB are needed",
                    disk_size / MIB,
                    p.number,
                    p.name,
                    (off + p.size.unwrap_or(MIB) + TAIL_RESERVE).div_ceil(MIB)
                );
            }
            out.push(Placed {
                spec: p.clone(),
                offset: off,
                size,
            });
            off += size;
        }
        Ok(out)
    }
}

/// A partition placed on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub spec: PartSpec,
    /// Byte offset from the start of the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_is_coreos_assemblers() {
        let l = Layout::for_arch("x86_64").unwrap();
        let placed = l.place(10 << 30).unwrap();
        let got: Vec<_> = placed
            .iter()
            .map(|p| (p.spec.number, p.spec.name, p.offset / MIB, p.size / MIB))
            .collect();
        assert_eq!(
            got,
            [
                (1, "BIOS-BOOT", 1, 1),
                (2, "EFI-SYSTEM", 2, 127),
                (3, "boot", 129, 384),
                (4, "root", 513, 10240 - 513 - 1),
            ]
        );
        assert_eq!(NONROOT_MIB, 513);
    }

    #[test]
    fn aarch64_keeps_boot_and_root_numbers() {
        let l = Layout::for_arch("aarch64").unwrap();
        assert_eq!(l.part(Role::Boot).unwrap().number, 3);
        assert_eq!(l.part(Role::Root).unwrap().number, 4);
        assert_eq!(l.part(Role::Root).unwrap().type_guid, types::ROOT_AARCH64);
        assert!(l.part(Role::BiosBoot).is_none());
        assert!(Layout::for_arch("s390x").is_err());
    }

    #[test]
    fn too_small_disk_says_what_is_needed() {
        let l = Layout::for_arch("x86_64").unwrap();
        let e = l.place(400 * MIB).unwrap_err().to_string();
        assert!(e.contains("boot") && e.contains("MiB"), "{e}");
        assert!(l.place(514 * MIB).is_err());
        assert!(l.place(516 * MIB).is_ok());
    }
}
