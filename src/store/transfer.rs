//! Downloading an object to a local file, verified by sha256 while it streams.
//!
//! The bytes go to `.cosa-tmp.<name>.partial` beside the final name; only a file
//! whose size and sha256 match is renamed into place, so a partial or corrupt file
//! never sits under its final name. A rerun continues a partial file from where it
//! stopped (its bytes so far are hashed again first), and a final file that already
//! matches is not fetched again.
//!
//! Bytes are written with direct I/O where the file system takes it
//! ([`super::direct`]; [`Transfer::direct`]), else through the page cache.
//! Durability is a choice ([`Transfer::sync`]): by default a file is renamed into
//! place without an fsync, as `aws s3 cp` and coreos-assembler's buildfetch leave
//! theirs. The rename is atomic against a killed process; after a power cut a file
//! may be short, and every reader checks it against meta.json's sha256 before use (a
//! rerun of cosa-fetch hashes a present file before it skips it). With `sync`, the
//! file and its directory are fsynced before and after the rename (through the page
//! cache, each chunk's writeback starts as it is written).
//!
//! Ranged stores (S3, file) are read as parallel ranged GETs of `part_size` bytes,
//! consumed in order, so hashing stays sequential; http(s) is one stream that is
//! reopened at the current offset after a transient failure.

use std::io::Read;
use std::pin::Pin;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use camino::{Utf8Path, Utf8PathBuf};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::Client;
use super::direct::{ALIGN, Writer};
use super::retry::{self, ATTEMPTS, is_transient, retry};
use crate::fsutil::{TMP_PREFIX, fsync_dir};

pub type ByteChunks = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// What a downloaded file must be.
#[derive(Debug, Clone)]
pub struct Expected {
    pub sha256: String,
    pub size: Option<u64>,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Already present and verified: not fetched.
    Present,
    /// Fetched (`bytes` over the network).
    Fetched { bytes: u64 },
}

/// The temporary name a download of `dest` is written under.
pub fn partial_path(dest: &Utf8Path) -> Utf8PathBuf {
    let name = dest.file_name().unwrap_or("download");
    dest.with_file_name(format!("{TMP_PREFIX}{name}.partial"))
}

/// How downloads run.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Ranged requests in flight per file.
    pub jobs: usize,
    /// Bytes per ranged request.
    pub part_size: u64,
    /// fsync each file (and its directory) when it takes its final name.
    pub sync: bool,
    /// Write with direct I/O where the file system takes it ([`super::direct`]).
    pub direct: bool,
}

struct Sink {
    writer: Writer,
    hasher: Sha256,
    written: u64,
    sync: bool,
}

impl Sink {
    /// Write and hash a chunk (in segments) off the async threads. Through the page
    /// cache with `sync`, start writing it back to the disk now, so that the final
    /// fsync has little left to wait for (with a large page cache, the kernel would
    /// otherwise hold the whole file dirty until that fsync).
    async fn push(mut self, segments: Vec<Bytes>) -> Result<Self> {
        tokio::task::spawn_blocking(move || -> Result<Self> {
            let mut len = 0;
            for b in &segments {
                self.hasher.update(b);
                len += b.len() as u64;
            }
            self.writer.write(&segments)?;
            if self.sync && !self.writer.is_direct() {
                start_writeback(self.writer.file(), self.written, len);
            }
            self.written += len;
            Ok(self)
        })
        .await
        .context("writing task failed")?
    }

    /// Check the size and sha256; a good file is renamed to `dest` (synced first and
    /// after with `sync`), a corrupt one removed. Blocking: run off the async threads.
    fn finish(
        self,
        part: &Utf8Path,
        dest: &Utf8Path,
        size: u64,
        exp: &Expected,
        what: &str,
    ) -> Result<()> {
        let Sink {
            writer,
            hasher,
            written,
            sync,
        } = self;
        if written != size {
            bail!("{what}: truncated: {written} of {size} bytes");
        }
        let got = hex::encode(hasher.finalize());
        if got != exp.sha256 {
            drop(writer);
            let _ = std::fs::remove_file(part);
            bail!(
                "{what}: sha256 mismatch: expected {}, got {got} (not written to {dest})",
                exp.sha256
            );
        }
        let file = writer.finish().with_context(|| format!("writing {part}"))?;
        if sync {
            file.sync_all().with_context(|| format!("syncing {part}"))?;
        }
        drop(file);
        std::fs::rename(part, dest).with_context(|| format!("renaming {part} to {dest}"))?;
        if sync && let Some(d) = dest.parent() {
            fsync_dir(d)?;
        }
        Ok(())
    }
}

/// Ask the kernel to start writing `len` bytes at `offset` back to the disk without
/// waiting for it (`POSIX_FADV_DONTNEED` on dirty pages starts their writeback; pages
/// still dirty or under writeback stay cached). Advisory: a failure changes nothing.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// sha256 of a local file, off the async threads.
pub async fn sha256_file(p: &Utf8Path) -> Result<(String, u64)> {
    let p = p.to_owned();
    tokio::task::spawn_blocking(move || crate::fsutil::sha256_file(&p))
        .await
        .context("hashing task failed")?
}

/// Download `key` to `dest`, verified against `exp`.
pub async fn download_verified(
    client: &Client,
    key: &str,
    dest: &Utf8Path,
    exp: &Expected,
    how: Transfer,
) -> Result<Fetch> {
    let what = client.describe(key);
    // A verified file is not fetched again.
    if let Ok(m) = std::fs::metadata(dest)
        && m.is_file()
        && exp.size.is_none_or(|s| s == m.len())
        && sha256_file(dest).await?.0 == exp.sha256
    {
        return Ok(Fetch::Present);
    }
    let size = match exp.size {
        Some(s) => s,
        None => {
            client
                .head(key)
                .await?
                .with_context(|| format!("{what}: not found in the store"))?
                .size
        }
    };
    let part = partial_path(dest);
    let sink = resume(&part, size, how).await?;
    let start = sink.written;
    if start > 0 {
        tracing::info!("{what}: resuming at byte {start} of {size}");
    }
    let sink = if client.ranged() {
        fetch_ranged(
            client,
            key,
            sink,
            size,
            how.jobs.max(1),
            how.part_size.max(1 << 20),
        )
        .await?
    } else {
        fetch_streamed(client, key, sink, size).await?
    };
    let (dest_owned, exp_owned) = (dest.to_owned(), exp.clone());
    tokio::task::spawn_blocking(move || sink.finish(&part, &dest_owned, size, &exp_owned, &what))
        .await
        .context("finishing task failed")??;
    Ok(Fetch::Fetched {
        bytes: size - start,
    })
}

/// Open the partial file, hashing what it already holds (a partial file longer than
/// the object is started over; with direct I/O, one is cut back to a block boundary,
/// where direct writes can continue).
async fn resume(part: &Utf8Path, size: u64, how: Transfer) -> Result<Sink> {
    let part = part.to_owned();
    tokio::task::spawn_blocking(move || -> Result<Sink> {
        use std::os::unix::fs::OpenOptionsExt;
        // Never write through a symlink (or into anything but a plain file) left under
        // the partial name: it could lead out of the build directory.
        if std::fs::symlink_metadata(&part).is_ok_and(|m| !m.file_type().is_file()) {
            std::fs::remove_file(&part).with_context(|| format!("removing {part}"))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&part)
            .with_context(|| format!("opening {part}"))?;
        let len = file
            .metadata()
            .with_context(|| format!("reading {part}"))?
            .len();
        let keep = match len {
            l if l > size => 0,
            l if how.direct => l - l % ALIGN,
            l => l,
        };
        if keep != len {
            file.set_len(keep)
                .with_context(|| format!("truncating {part}"))?;
        }
        let mut hasher = Sha256::new();
        let mut written = 0;
        if keep > 0 {
            let mut r = std::fs::File::open(&part)
                .with_context(|| format!("opening {part}"))?
                .take(keep);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = r
                    .read(&mut buf)
                    .with_context(|| format!("reading {part}"))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                written += n as u64;
            }
        }
        let writer =
            Writer::new(file, written, how.direct).with_context(|| format!("opening {part}"))?;
        Ok(Sink {
            writer,
            hasher,
            written,
            sync: how.sync,
        })
    })
    .await
    .context("opening task failed")?
}

async fn fetch_ranged(
    client: &Client,
    key: &str,
    mut sink: Sink,
    size: u64,
    jobs: usize,
    part_size: u64,
) -> Result<Sink> {
    let mut ranges = Vec::new();
    let mut off = sink.written;
    while off < size {
        let len = part_size.min(size - off);
        ranges.push((off, len));
        off += len;
    }
    // Each range is its own task, so that requests keep flowing while a chunk is
    // written and hashed; chunks are consumed in order.
    let mut chunks = futures::stream::iter(ranges)
        .map(|(start, len)| {
            let (client, key) = (client.clone(), key.to_string());
            Task(tokio::spawn(async move {
                retry(|| client.get_range(&key, start, len)).await
            }))
        })
        .buffered(jobs);
    while let Some(b) = chunks.next().await {
        let b = b.context("download task failed")??;
        sink = sink.push(b).await?;
    }
    Ok(sink)
}

/// A spawned task that is aborted when dropped (e.g. when another range failed).
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for Task<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

async fn fetch_streamed(client: &Client, key: &str, mut sink: Sink, size: u64) -> Result<Sink> {
    let what = client.describe(key);
    let mut failures = 0;
    'open: loop {
        let mut s = retry(|| client.get_stream(key, sink.written)).await?;
        while let Some(c) = s.next().await {
            match c {
                Ok(b) => {
                    if sink.written + b.len() as u64 > size {
                        bail!("{what}: larger than the expected {size} bytes");
                    }
                    sink = sink.push(vec![b]).await?;
                }
                Err(e) if is_transient(&e) && failures + 1 < ATTEMPTS => {
                    failures += 1;
                    let d = retry::backoff(failures);
                    tracing::warn!(
                        "{e:#}; resuming at byte {} in {} ms ({failures}/{})",
                        sink.written,
                        d.as_millis(),
                        ATTEMPTS - 1
                    );
                    tokio::time::sleep(d).await;
                    continue 'open;
                }
                Err(e) => return Err(e),
            }
        }
        // A body that ends early without an error (no Content-Length) is reopened too.
        if sink.written < size && failures + 1 < ATTEMPTS {
            failures += 1;
            tracing::warn!(
                "{what}: body ended at byte {} of {size}; resuming ({failures}/{})",
                sink.written,
                ATTEMPTS - 1
            );
            tokio::time::sleep(retry::backoff(failures)).await;
            continue 'open;
        }
        return Ok(sink);
    }
}
