//! Writing a download to its file: with direct I/O (`O_DIRECT`) where the file
//! system takes it, else through the page cache.
//!
//! Direct I/O sends the bytes from one reused, aligned buffer to the disk: the page
//! cache neither fills with pages that must each be allocated (on a VM, a first
//! touch of guest memory can cost more than the copy itself) nor evicts the job's
//! working set, and the data is on the disk when the writer is done. A file system
//! without direct I/O (tmpfs on older kernels, some FUSE and network file systems)
//! refuses the flag or the first write with `EINVAL`; the writer then goes on
//! through the page cache, from where it stopped.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use rustix::fs::OFlags;

/// File offsets, lengths and buffer addresses of direct writes are multiples of
/// this: every logical block size in use (512 or 4096 bytes) divides it.
pub const ALIGN: u64 = 4096;

/// Bytes per direct write.
const STAGE: usize = 4 << 20;

/// Writes bytes at consecutive offsets of a file, from `start` on.
pub struct Writer {
    file: File,
    /// Offset of the first byte in `stage` (of the next write, when buffered).
    at: u64,
    mode: Mode,
}

enum Mode {
    /// `buf[off..off + STAGE]` is aligned; `len` bytes of it are filled.
    Direct {
        buf: Vec<u8>,
        off: usize,
        len: usize,
    },
    Buffered,
}

impl Writer {
    /// A writer appending at `start`, direct if `direct`, `start` is aligned and the
    /// file system accepts `O_DIRECT`.
    pub fn new(mut file: File, start: u64, direct: bool) -> std::io::Result<Self> {
        let mode = if direct && start.is_multiple_of(ALIGN) && set_direct(&file, true) {
            let buf = vec![0u8; STAGE + ALIGN as usize];
            let off = buf.as_ptr().align_offset(ALIGN as usize);
            Mode::Direct { buf, off, len: 0 }
        } else {
            file.seek(SeekFrom::Start(start))?;
            Mode::Buffered
        };
        Ok(Self {
            file,
            at: start,
            mode,
        })
    }

    /// Whether writes go straight to the disk.
    pub fn is_direct(&self) -> bool {
        matches!(self.mode, Mode::Direct { .. })
    }

    /// The file, for advice and syncing; its offset is the writer's business.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Append `segments`.
    pub fn write(&mut self, segments: &[Bytes]) -> std::io::Result<()> {
        if matches!(self.mode, Mode::Buffered) {
            let n = write_segments(&mut self.file, segments)?;
            self.at += n;
            return Ok(());
        }
        for s in segments {
            let mut s: &[u8] = s;
            while !s.is_empty() {
                let Mode::Direct { buf, off, len } = &mut self.mode else {
                    // Fell back to buffered while flushing.
                    self.file.write_all(s)?;
                    self.at += s.len() as u64;
                    break;
                };
                let n = s.len().min(STAGE - *len);
                buf[*off + *len..*off + *len + n].copy_from_slice(&s[..n]);
                *len += n;
                s = &s[n..];
                if *len == STAGE {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Write out what is staged; the file then ends where the bytes written end.
    pub fn finish(mut self) -> std::io::Result<File> {
        self.flush()?;
        Ok(self.file)
    }

    /// Write the staged bytes at `at`. A short last block is written whole (padded
    /// with zeros) and the file cut back to its true length.
    fn flush(&mut self) -> std::io::Result<()> {
        let Mode::Direct { buf, off, len } = &mut self.mode else {
            return Ok(());
        };
        if *len == 0 {
            return Ok(());
        }
        let n = *len;
        let padded = (n as u64).next_multiple_of(ALIGN) as usize;
        buf[*off + n..*off + padded].fill(0);
        match self.file.write_all_at(&buf[*off..*off + padded], self.at) {
            Ok(()) => {
                *len = 0;
                self.at += n as u64;
                if padded != n {
                    self.file.set_len(self.at)?;
                }
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                // The file system took the flag but not the write: go on buffered.
                tracing::debug!("direct write refused ({e}); writing through the page cache");
                let staged = buf[*off..*off + n].to_vec();
                self.mode = Mode::Buffered;
                set_direct(&self.file, false);
                self.file.set_len(self.at)?;
                self.file.seek(SeekFrom::Start(self.at))?;
                self.file.write_all(&staged)?;
                self.at += n as u64;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Turn `O_DIRECT` on or off; false if the file system refuses it.
fn set_direct(file: &File, on: bool) -> bool {
    let Ok(flags) = rustix::fs::fcntl_getfl(file) else {
        return false;
    };
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    rustix::fs::fcntl_setfl(file, flags).is_ok()
}

/// Write segments with as few system calls as possible: a server may send its body
/// in small frames (s3s-fs: 4 KiB), one `write` each would be 256 calls per MiB;
/// `writev` takes up to 1024 of them at once. Returns the bytes written.
pub fn write_segments(file: &mut File, segments: &[Bytes]) -> std::io::Result<u64> {
    use std::io::IoSlice;
    let mut iov: Vec<IoSlice<'_>> = segments
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut total = 0;
    let mut rest = &mut iov[..];
    while !rest.is_empty() {
        let n = file.write_vectored(&rest[..rest.len().min(1024)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        total += n as u64;
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Odd-sized segments across stage boundaries, from an aligned resume offset,
    /// with a short last block: the file holds exactly the bytes, whichever mode the
    /// file system allowed.
    #[test]
    fn writes_exact_bytes_direct_or_not() -> anyhow::Result<()> {
        let dir = tempfile::tempdir_in(std::env::temp_dir())?;
        for direct in [true, false] {
            let path = dir.path().join(format!("f-{direct}"));
            let head = pattern(2 * ALIGN as usize, 7);
            std::fs::write(&path, &head)?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)?;
            let mut w = Writer::new(file, head.len() as u64, direct)?;
            let body = pattern(STAGE * 2 + 12_345, 3);
            let segs: Vec<Bytes> = body.chunks(65_521).map(Bytes::copy_from_slice).collect();
            w.write(&segs[..3])?;
            w.write(&segs[3..])?;
            drop(w.finish()?);
            let got = std::fs::read(&path)?;
            assert_eq!(got.len(), head.len() + body.len(), "direct={direct}");
            assert!(got[..head.len()] == head[..], "direct={direct}: head kept");
            assert!(got[head.len()..] == body[..], "direct={direct}: body");
        }
        Ok(())
    }

    /// Where the file system takes O_DIRECT (ext4, xfs: the CI machines' disks), the
    /// writer uses it, and not from an unaligned offset.
    #[test]
    fn direct_only_from_aligned_offsets() -> anyhow::Result<()> {
        let dir = tempfile::tempdir_in("/var/tmp")?;
        let path = dir.path().join("f");
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        };
        let probe = open()?;
        if !set_direct(&probe, true) {
            eprintln!("skipped: /var/tmp does not take O_DIRECT");
            return Ok(());
        }
        drop(probe);
        assert!(Writer::new(open()?, 0, true)?.is_direct());
        assert!(!Writer::new(open()?, 100, true)?.is_direct());
        assert!(!Writer::new(open()?, 0, false)?.is_direct());
        Ok(())
    }

    /// More segments than one `writev` takes, empty ones among them, all written in
    /// order.
    #[test]
    fn segments_are_written_in_order() -> anyhow::Result<()> {
        let td = tempfile::tempdir()?;
        let p = td.path().join("f");
        let mut f = std::fs::File::create(&p)?;
        let mut want = Vec::new();
        let segments: Vec<Bytes> = (0..3000u32)
            .map(|i| {
                let b: Vec<u8> = (0..(i % 7) * 100).map(|j| (i + j) as u8).collect();
                want.extend_from_slice(&b);
                Bytes::from(b)
            })
            .collect();
        assert_eq!(write_segments(&mut f, &segments)?, want.len() as u64);
        drop(f);
        assert_eq!(std::fs::read(&p)?, want);
        Ok(())
    }
}
