//! Disk images from a build's OSTree commit: `cosa-image`.
//!
//! coreos-assembler makes disks inside a VM (supermin, then osbuild) and needs
//! `/dev/kvm`. This makes the same disks as an ordinary user on a CI runner: the
//! commit is deployed with `ostree admin` into a plain directory (in a user namespace
//! when not root), the filesystems are filled from directories (`mkfs.ext4 -d`,
//! mtools) straight into a sparse disk file at the partition offsets, the GPT and
//! GRUB's BIOS stages are written by this code, and `qemu-img` converts. No mount,
//! no loop device, no VM.
//!
//! - [`config`]: image.yaml (flattened into the commit as image.json by compose).
//! - [`layout`]: the partition layouts, UUIDs and labels; [`gpt`] writes the table.
//! - [`commit`]: the commit in `tmp/repo` (imported from the build's tar if needed), sizing.
//! - [`deploy`]: the staging sysroot; [`privilege`]: root or `unshare -r`.
//! - [`bls`], [`grub`]: boot entries, grub.cfg, BIOS and UEFI GRUB.
//! - [`disk`]: filesystems and sparse copies; [`build`]: the steps, in order.
//! - [`qemu`]: booting an image (`cosa-image run`); [`cli`]: the command line.
//!
//! Kernel arguments of an image live on its boot filesystem (partition 3, ext4), in
//! `/loader.1/entries/ostree-1-<os>.conf` (`options` line) and `/grub2/grub.cfg`
//! (generated from the entries by [`grub::grub_cfg`]). A later step deriving another
//! platform's image rewrites those two files (e.g. `debugfs -w`), nothing else.

pub mod bls;
pub mod build;
pub mod cli;
pub mod commit;
pub mod config;
pub mod deploy;
pub mod disk;
pub mod gpt;
pub mod grub;
pub mod layout;
pub mod privilege;
pub mod qemu;

pub use build::{Platform, Request, build};
pub use cli::Args;
