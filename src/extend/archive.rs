//! The archive formats written here, streamed (no staging copies): POSIX ustar tar
//! (OVA, OCI image layout and its layer) and the `newc` cpio of CoreOS's live
//! `rootfs.img`, plus a writer that hashes what passes through it.

use std::io::{Read, Write};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

pub const BLOCK: usize = 512;

/// A writer that counts and SHA-256-hashes the bytes written through it.
pub struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    /// (hex sha256, bytes) and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        (hex::encode(self.hash.finalize()), self.len, self.inner)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A writer that only hashes and counts (to learn a digest before writing).
pub fn hash_sink() -> HashWriter<std::io::Sink> {
    HashWriter::new(std::io::sink())
}

/// One tar member's header fields.
#[derive(Debug, Clone)]
pub struct TarEntry<'a> {
    pub name: &'a str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: u64,
    /// `b'0'` file, `b'5'` directory.
    pub kind: u8,
}

fn octal(field: &mut [u8], v: u64) -> Result<()> {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        bail!("{v} does not fit a {digits}-digit tar field");
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

/// A ustar header block. Sizes over ustar's 8 GiB limit use the GNU base-256 form
/// (read by GNU tar, bsdtar, Go and Python).
pub fn tar_header(e: &TarEntry<'_>) -> Result<[u8; BLOCK]> {
    let mut h = [0u8; BLOCK];
    let (prefix, name) = if e.name.len() <= 100 {
        ("", e.name)
    } else {
        match e.name[..e.name.len().min(156)].rfind('/') {
            Some(i) if i <= 155 && e.name.len() - i - 1 <= 100 => (&e.name[..i], &e.name[i + 1..]),
            _ => bail!("tar member name {:?} is too long for ustar", e.name),
        }
    };
    if e.name.is_empty() || e.name.contains('\0') {
        bail!("bad tar member name {:?}", e.name);
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(e.mode))?;
    octal(&mut h[108..116], u64::from(e.uid))?;
    octal(&mut h[116..124], u64::from(e.gid))?;
    if e.size < 0o77777777777 {
        octal(&mut h[124..136], e.size)?;
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&e.size.to_be_bytes());
    }
    octal(&mut h[136..148], e.mtime)?;
    h[156] = e.kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // User and group names only for root (readers map names before numbers).
    if e.uid == 0 {
        h[265..269].copy_from_slice(b"root");
    }
    if e.gid == 0 {
        h[297..301].copy_from_slice(b"root");
    }
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// Padding after `size` bytes of member data.
pub fn tar_padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// Bytes a member takes in the archive (header, data, padding).
pub fn tar_member_len(size: u64) -> u64 {
    BLOCK as u64 + size + tar_padding(size) as u64
}

/// The two zero blocks that end an archive.
pub const TAR_END: [u8; 2 * BLOCK] = [0u8; 2 * BLOCK];

/// Write one member whose data comes from `data` (exactly `e.size` bytes).
pub fn tar_member(w: &mut impl Write, e: &TarEntry<'_>, data: &mut impl Read) -> Result<()> {
    w.write_all(&tar_header(e)?)?;
    let n = std::io::copy(&mut data.take(e.size), w)?;
    if n != e.size {
        bail!("{}: {n} bytes read, {} expected", e.name, e.size);
    }
    w.write_all(&[0u8; BLOCK][..tar_padding(e.size)])?;
    Ok(())
}

/// Write one member from bytes in memory.
pub fn tar_bytes(w: &mut impl Write, name: &str, mode: u32, mtime: u64, data: &[u8]) -> Result<()> {
    tar_member(
        w,
        &TarEntry {
            name,
            mode,
            uid: 0,
            gid: 0,
            size: data.len() as u64,
            mtime,
            kind: b'0',
        },
        &mut &data[..],
    )
}

/// One file in a `newc` cpio archive followed by the trailer: CoreOS's live
/// `rootfs.img` (a cpio holding `root.squashfs`, to append to the initramfs).
pub fn cpio_one_file(
    w: &mut impl Write,
    name: &str,
    mode: u32,
    mtime: u64,
    size: u64,
    data: &mut impl Read,
) -> Result<()> {
    let size32 = u32::try_from(size).context("a newc cpio member is at most 4 GiB")?;
    let mtime32 = u32::try_from(mtime).unwrap_or(0);
    let mut w = HashWriter::new(w);
    let pad = |n: u64, to: u64| ((to - (n % to)) % to) as usize;
    let header = |ino: u32, mode: u32, mtime: u32, size: u32, name: &str| {
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check
        format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{mtime:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        )
    };
    w.write_all(header(1, 0o100000 | mode, mtime32, size32, name).as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0u8; 4][..pad(w.len, 4)])?;
    let n = std::io::copy(&mut data.take(size), &mut w)?;
    if n != size {
        bail!("{name}: {n} bytes read, {size} expected");
    }
    w.write_all(&[0u8; 4][..pad(w.len, 4)])?;
    let t = "TRAILER!!!";
    w.write_all(header(0, 0, 0, 0, t).as_bytes())?;
    w.write_all(t.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0u8; 4][..pad(w.len, 4)])?;
    // Whole 512-byte blocks, as cpio(1) writes them.
    w.write_all(&[0u8; 512][..pad(w.len, 512)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn tar_read_back_by_gnu_tar() -> Result<()> {
        let td = tempfile::tempdir()?;
        let p = td.path().join("a.tar");
        let mut f = std::fs::File::create(&p)?;
        tar_member(
            &mut f,
            &TarEntry {
                name: "disk/",
                mode: 0o555,
                uid: 107,
                gid: 107,
                size: 0,
                mtime: 1,
                kind: b'5',
            },
            &mut std::io::empty(),
        )?;
        tar_bytes(&mut f, "disk/x.qcow2", 0o444, 1_700_000_000, b"hello")?;
        let long = format!("blobs/sha256/{}/{}", "a".repeat(64), "b".repeat(60));
        tar_bytes(&mut f, &long, 0o644, 0, b"")?;
        f.write_all(&TAR_END)?;
        drop(f);
        let o = Command::new("tar").arg("-tvf").arg(&p).output()?;
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(s.contains("dr-xr-xr-x 107/107"), "{s}");
        assert!(
            s.contains("-r--r--r-- root/root") && s.contains("5 2023-11-14"),
            "{s}"
        );
        assert!(s.contains(&long), "{s}");
        assert_eq!(
            std::fs::metadata(&p)?.len(),
            tar_member_len(0) + tar_member_len(5) + tar_member_len(0) + 1024
        );
        let too_long = "x".repeat(300);
        assert!(
            tar_header(&TarEntry {
                name: &too_long,
                mode: 0,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: 0,
                kind: b'0'
            })
            .is_err()
        );
        Ok(())
    }

    #[test]
    fn big_sizes_use_base_256() -> Result<()> {
        let h = tar_header(&TarEntry {
            name: "big",
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 10 << 30,
            mtime: 0,
            kind: b'0',
        })?;
        assert_eq!(h[124], 0x80);
        assert_eq!(&h[128..136], &(10u64 << 30).to_be_bytes());
        Ok(())
    }

    #[test]
    fn cpio_read_back_by_cpio() -> Result<()> {
        if !crate::cmd::have("cpio") {
            return Ok(());
        }
        let td = tempfile::tempdir()?;
        let p = td.path().join("r.img");
        let mut f = std::fs::File::create(&p)?;
        cpio_one_file(&mut f, "root.squashfs", 0o644, 0, 7, &mut &b"squashy"[..])?;
        drop(f);
        assert_eq!(std::fs::metadata(&p)?.len() % 512, 0);
        std::fs::create_dir(td.path().join("out"))?;
        let o = Command::new("cpio")
            .args(["-i", "--quiet", "-D"])
            .arg(td.path().join("out"))
            .arg("--make-directories")
            .stdin(std::fs::File::open(&p)?)
            .output()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            std::fs::read(td.path().join("out/root.squashfs"))?,
            b"squashy"
        );
        Ok(())
    }

    #[test]
    fn hashing_writer() -> Result<()> {
        let mut h = hash_sink();
        h.write_all(b"abc")?;
        let (sum, n, _) = h.finish();
        assert_eq!(n, 3);
        assert_eq!(
            sum,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        Ok(())
    }
}
