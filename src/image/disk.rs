//! Filesystems and disk files without mounts or loop devices.
//!
//! - ext4 is made straight into the disk file at the partition's offset
//!   (`mkfs.ext4 -E offset=`), filled from a directory (`-d`), run as root or in a user
//!   namespace so that files are owned by uid 0.
//! - The ESP is a small FAT image made with `mkfs.fat` and filled with mtools, then
//!   copied into the disk skipping holes and zero blocks ([`copy_sparse`]).
//! - The disk file is sparse throughout: only written blocks take space.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::Command;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;

use super::privilege::AsRoot;
use crate::cmd::CommandRunExt;

/// Create (or truncate) a sparse file of `size` bytes.
pub fn create_sparse(path: &Utf8Path, size: u64) -> Result<File> {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {path}"))?;
    f.set_len(size)
        .with_context(|| format!("sizing {path} to {size} bytes"))?;
    Ok(f)
}

/// Copy `src` into `dst` at `dst_offset`, writing only the data regions of `src` that
/// are not all zeros (the destination is sparse, so skipped ranges read as zeros).
pub fn copy_sparse(
    src: &Utf8Path,
    dst: &File,
    dst_path: &Utf8Path,
    dst_offset: u64,
) -> Result<u64> {
    use rustix::fs::{SeekFrom, seek};
    let f = File::open(src).with_context(|| format!("opening {src}"))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading {src}"))?
        .len();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    let mut written = 0u64;
    while pos < len {
        // Jump to the next data region (holes read as zeros and need no write).
        let data = match seek(&f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e).with_context(|| format!("seeking in {src}")),
        };
        let hole = match seek(&f, SeekFrom::Hole(data)) {
            Ok(h) => h.min(len),
            Err(e) => return Err(e).with_context(|| format!("seeking in {src}")),
        };
        let mut p = data;
        while p < hole {
            let n = ((hole - p) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], p)
                .with_context(|| format!("reading {src}"))?;
            if buf[..n].iter().any(|b| *b != 0) {
                dst.write_all_at(&buf[..n], dst_offset + p)
                    .with_context(|| format!("writing {dst_path}"))?;
                written += n as u64;
            }
            p += n as u64;
        }
        pos = hole;
    }
    Ok(written)
}

/// An ext4 filesystem to make at an offset of a disk file.
#[derive(Debug, Clone)]
pub struct Ext4<'a> {
    pub label: &'a str,
    pub uuid: &'a str,
    /// Fill from this directory.
    pub source: &'a Utf8Path,
    pub offset: u64,
    pub size: u64,
    /// ext4 `metadata_csum_seed` (the UUID can change without rewriting checksums).
    pub csum_seed: bool,
    /// Inode count, when the default (one per 16 KiB) would be too few.
    pub inodes: Option<u64>,
}

/// `mkfs.ext4` arguments for [`Ext4`] on `disk`.
pub fn mkfs_ext4_argv(fs: &Ext4<'_>, disk: &Utf8Path) -> Vec<String> {
    // No discard (it would punch holes outside what we own if offsets were wrong, and
    // the file is sparse already); lazy init: leave zeroed tables as holes.
    let ext = format!(
        "root_owner=0:0,offset={},nodiscard,lazy_itable_init=1,lazy_journal_init=1",
        fs.offset
    );
    let mut a: Vec<String> = vec![
        "mkfs.ext4".into(),
        "-q".into(),
        "-F".into(),
        // Fixed type, whatever the size: 4 KiB blocks, 256-byte inodes, 16 KiB per inode.
        "-T".into(),
        "default".into(),
        "-b".into(),
        "4096".into(),
        "-L".into(),
        fs.label.into(),
        "-U".into(),
        fs.uuid.into(),
        "-d".into(),
        fs.source.to_string(),
    ];
    a.push("-E".into());
    a.push(ext);
    if fs.csum_seed {
        a.push("-O".into());
        a.push("metadata_csum_seed".into());
    }
    if let Some(n) = fs.inodes {
        a.push("-N".into());
        a.push(n.to_string());
    }
    a.push(disk.to_string());
    a.push(format!("{}k", fs.size / 1024));
    a
}

/// Make an ext4 filesystem at an offset of `disk`, filled from a directory.
pub fn mkfs_ext4(asroot: AsRoot, fs: &Ext4<'_>, disk: &Utf8Path) -> Result<()> {
    asroot
        .command(&mkfs_ext4_argv(fs, disk))?
        .run()
        .with_context(|| {
            format!(
                "making the {} filesystem ({} MiB) from {}",
                fs.label,
                fs.size >> 20,
                fs.source
            )
        })
}

/// Make a FAT ESP image file of `size` bytes with these files (`(source, path on the
/// ESP)`, paths like `EFI/BOOT/BOOTX64.EFI`).
pub fn make_esp(
    path: &Utf8Path,
    size: u64,
    sector: u64,
    label: &str,
    volid: &str,
    files: &[(&Utf8Path, &str)],
) -> Result<()> {
    if !size.is_multiple_of(1024) {
        bail!("ESP size {size} is not a whole number of KiB");
    }
    let _ = std::fs::remove_file(path);
    Command::new("mkfs.fat")
        .args(["-n", label, "-i", volid, "-S", &sector.to_string(), "-C"])
        .arg(path)
        .arg((size / 1024).to_string())
        .run()
        .with_context(|| format!("making the ESP image {path}"))?;
    let mut dirs: Vec<String> = Vec::new();
    for (_, dest) in files {
        let parts: Vec<&str> = dest.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    for d in &dirs {
        Command::new("mmd")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(path)
            .arg(format!("::/{d}"))
            .run()
            .with_context(|| format!("creating {d} on the ESP image {path}"))?;
    }
    for (src, dest) in files {
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(path)
            .arg(src)
            .arg(format!("::/{dest}"))
            .run()
            .with_context(|| format!("copying {src} to {dest} on the ESP image {path}"))?;
    }
    Ok(())
}

/// Convert a raw disk to qcow2 (version 3, `compat=1.1`, as coreos-assembler does).
pub fn qemu_img_to_qcow2(raw: &Utf8Path, out: &Utf8Path) -> Result<()> {
    Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"])
        .arg(raw)
        .arg(out)
        .run()
        .with_context(|| format!("converting {raw} to qcow2"))
}

/// Bytes a file really takes on disk (sparse files take less than their length).
pub fn allocated(path: &Utf8Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading {path}"))?
        .blocks()
        * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_skips_holes_and_zeros() {
        let td = tempfile::tempdir().unwrap();
        let d = camino::Utf8PathBuf::from_path_buf(td.path().to_path_buf()).unwrap();
        let src = d.join("src");
        let f = create_sparse(&src, 8 << 20).unwrap();
        f.write_all_at(b"hello", 3 << 20).unwrap();
        f.write_all_at(&vec![0u8; 1 << 20], 5 << 20).unwrap();
        f.write_all_at(b"end", (8 << 20) - 3).unwrap();
        let dst_path = d.join("dst");
        let dst = create_sparse(&dst_path, 16 << 20).unwrap();
        let w = copy_sparse(&src, &dst, &dst_path, 1 << 20).unwrap();
        assert!(w < 4 << 20, "wrote {w}");
        let mut b = [0u8; 5];
        dst.read_exact_at(&mut b, (4 << 20) as u64).unwrap();
        assert_eq!(&b, b"hello");
        let mut e = [0u8; 3];
        dst.read_exact_at(&mut e, (9 << 20) - 3).unwrap();
        assert_eq!(&e, b"end");
        assert!(allocated(&dst_path).unwrap() < 8 << 20);
    }

    #[test]
    fn mkfs_argv() {
        let fs = Ext4 {
            label: "boot",
            uuid: "u",
            source: Utf8Path::new("/b"),
            offset: 1 << 20,
            size: 384 << 20,
            csum_seed: true,
            inodes: Some(10),
        };
        let a = mkfs_ext4_argv(&fs, Utf8Path::new("/d.raw")).join(" ");
        assert!(
            a.contains("-E root_owner=0:0,offset=1048576,nodiscard"),
            "{a}"
        );
        assert!(
            a.contains("-O metadata_csum_seed -N 10 /d.raw 393216k"),
            "{a}"
        );
    }
}
