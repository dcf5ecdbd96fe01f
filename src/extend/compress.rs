//! `cosa-extend compress` and `decompress`: coreos-assembler's `cosa compress` /
//! `cosa decompress` on a build's images.
//!
//! - The compressor is `--compressor`, else image.yaml's `platform-compressor` for the
//!   image's key, else its `compressor`, else gzip (coreos-assembler's default).
//!   Commands: `xz -c -9 -T0`, `zstd -c -10 -T0`, `pigz -c -6` when installed else
//!   `gzip -c -6`; `--fast` uses each one's lowest level.
//! - Skipped: images with `skip-compression`, the keys coreos-assembler never
//!   compresses (OSTree archive, live artifacts, OVAs, ...), files already compressed.
//! - Each compressed image gets `uncompressed-sha256`/`uncompressed-size` (its old
//!   `sha256`/`size`), `path` + `.xz`/`.gz`/`.zst`, and the new `sha256`/`size`.
//! - The input is streamed to the compressor by this process, which hashes it on the
//!   way: an input whose SHA-256 is not meta.json's is refused (corrupt image) and
//!   nothing changes. The output is hashed as it is written.
//! - Restartable: each image is compressed to a `.cosa-tmp.` file in the build
//!   directory; then, under the work directory lock, meta.json is re-read, the file is
//!   renamed into place and meta.json rewritten (atomically) before the uncompressed
//!   file is removed. Killed at any point, a rerun finishes the job: an image already
//!   recorded as compressed is skipped (and a leftover uncompressed file removed).
//!
//! `decompress` is the inverse, checking the result against `uncompressed-sha256`.
//! Decompressed disks are written sparse (all-zero blocks become holes).

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};

use super::archive::HashWriter;
use crate::fsutil::TMP_PREFIX;
use crate::image::config::{Compressor, ImageConfig};
use crate::meta::{Artifact, Meta};
use crate::workdir::Workdir;

/// The suffix a compressor adds.
pub fn suffix(c: Compressor) -> &'static str {
    match c {
        Compressor::Xz => "xz",
        Compressor::Gzip => "gz",
        Compressor::Zstd => "zst",
    }
}

/// The compressor of a compressed file name.
pub fn compressor_of(path: &str) -> Option<Compressor> {
    let ext = path.rsplit_once('.')?.1;
    match ext {
        "xz" => Some(Compressor::Xz),
        "gz" => Some(Compressor::Gzip),
        "zst" => Some(Compressor::Zstd),
        _ => None,
    }
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// gzip's command: pigz (parallel) when installed, else gzip; `-n` so that the output
/// does not depend on the input's name or time.
pub fn gzip_command(fast: bool) -> Result<Command> {
    let level = if fast { "-1" } else { "-6" };
    if crate::cmd::have("pigz") {
        let mut c = Command::new("pigz");
        c.args(["-c", "-n", level, "-p", &threads().to_string()]);
        Ok(c)
    } else if crate::cmd::have("gzip") {
        let mut c = Command::new("gzip");
        c.args(["-c", "-n", level]);
        Ok(c)
    } else {
        bail!("neither pigz nor gzip found on PATH (Debian/Ubuntu package: gzip)")
    }
}

/// The command compressing stdin to stdout.
pub fn compress_command(c: Compressor, fast: bool) -> Result<Command> {
    let need = |t: &str, pkg: &str| -> Result<()> {
        if !crate::cmd::have(t) {
            bail!("{t} not found on PATH (Debian/Ubuntu package: {pkg})");
        }
        Ok(())
    };
    Ok(match c {
        Compressor::Xz => {
            need("xz", "xz-utils")?;
            let mut x = Command::new("xz");
            x.args(["-c", if fast { "-0" } else { "-9" }, "-T0"]);
            x
        }
        Compressor::Zstd => {
            need("zstd", "zstd")?;
            let mut x = Command::new("zstd");
            x.args(["-c", "-q", if fast { "-1" } else { "-10" }, "-T0"]);
            x
        }
        Compressor::Gzip => gzip_command(fast)?,
    })
}

/// The command decompressing stdin to stdout.
pub fn decompress_command(c: Compressor) -> Result<Command> {
    let (prog, pkg) = match c {
        Compressor::Xz => ("xz", "xz-utils"),
        Compressor::Zstd => ("zstd", "zstd"),
        Compressor::Gzip if crate::cmd::have("pigz") => ("pigz", "pigz"),
        Compressor::Gzip => ("gzip", "gzip"),
    };
    if !crate::cmd::have(prog) {
        bail!("{prog} not found on PATH (Debian/Ubuntu package: {pkg})");
    }
    let mut x = Command::new(prog);
    x.args(["-d", "-c"]);
    if c == Compressor::Xz {
        x.arg("-T0");
    }
    if c == Compressor::Zstd {
        x.arg("-q");
    }
    Ok(x)
}

/// Feed `input` through `filter` into `output`, hashing both sides. When `sparse`,
/// all-zero 64 KiB blocks of the output are skipped (holes). Returns
/// ((input sha256, input size), (output sha256, output size)).
pub fn filter_file(
    mut filter: Command,
    input: &Utf8Path,
    output: &Utf8Path,
    sparse: bool,
) -> Result<((String, u64), (String, u64))> {
    let desc = crate::cmd::describe(&filter);
    tracing::debug!("exec: {desc} < {input} > {output}");
    let mut src = std::fs::File::open(input).with_context(|| format!("opening {input}"))?;
    let out = std::fs::File::create(output).with_context(|| format!("creating {output}"))?;
    let mut child = filter
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {desc}"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let (fed, written, err_text) = std::thread::scope(|s| {
        let feeder = s.spawn(move || -> std::io::Result<(String, u64)> {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let r = src.read(&mut buf)?;
                if r == 0 {
                    break;
                }
                h.update(&buf[..r]);
                n += r as u64;
                stdin.write_all(&buf[..r])?;
            }
            drop(stdin);
            Ok((hex::encode(h.finalize()), n))
        });
        let errs = s.spawn(move || {
            let mut e = Vec::new();
            let _ = stderr.read_to_end(&mut e);
            e
        });
        let written = write_out(&mut stdout, &out, sparse);
        drop(stdout);
        let fed = feeder
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("feeder thread panicked")));
        let e = errs.join().unwrap_or_default();
        (fed, written, e)
    });
    let st = child.wait().with_context(|| format!("running {desc}"))?;
    if !st.success() {
        bail!(
            "{desc} failed on {input} ({st}): {}",
            crate::cmd::tail(&err_text)
        );
    }
    let fed = fed.with_context(|| format!("reading {input}"))?;
    let written = written
        .with_context(|| format!("writing {output}"))
        .map_err(|e| super::derive::explain_full(e, output))?;
    Ok((fed, written))
}

/// Copy `r` to `f`, hashing; all-zero blocks become holes when `sparse`.
fn write_out(r: &mut impl Read, f: &std::fs::File, sparse: bool) -> Result<(String, u64)> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 16;
    let mut h = Sha256::new();
    let mut pos = 0u64;
    if !sparse {
        let mut w = HashWriter::new(std::io::BufWriter::with_capacity(1 << 20, f));
        std::io::copy(r, &mut w)?;
        w.flush()?;
        let (s, n, _) = w.finish();
        return Ok((s, n));
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Fill a whole chunk (pipes return short reads).
        let mut got = 0;
        while got < CHUNK {
            let n = r.read(&mut buf[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        let b = &buf[..got];
        h.update(b);
        if b.iter().any(|x| *x != 0) {
            f.write_all_at(b, pos)?;
        }
        pos += got as u64;
        if got < CHUNK {
            break;
        }
    }
    f.set_len(pos)?;
    Ok((hex::encode(h.finalize()), pos))
}

/// What to compress or decompress.
#[derive(Debug, Clone)]
pub struct Request {
    pub build: Option<String>,
    pub arch: String,
    /// `None`: image.yaml's choice (per image).
    pub compressor: Option<Compressor>,
    /// Only these images keys (empty: all).
    pub artifacts: Vec<String>,
    pub fast: bool,
}

/// One image done.
#[derive(Debug, Clone)]
pub struct Done {
    pub key: String,
    pub path: String,
}

/// The image configuration for compressor choices: the build's `image.json` (written
/// by compose), else the commit's, else src/config/image.yaml, else defaults.
pub fn build_image_config(wd: &Workdir, arch_dir: &Utf8Path, meta: &Meta) -> Result<ImageConfig> {
    let p = arch_dir.join("image.json");
    if p.is_file() {
        let b = crate::parse::read_limited(&p, crate::parse::MAX_JSON_BYTES)?;
        return ImageConfig::from_json(&b, p.as_str());
    }
    let repo = wd.repo_dir();
    if crate::image::commit::has_commit(&repo, &meta.ostree_commit) {
        return crate::image::build::image_config(wd, &repo, &meta.ostree_commit);
    }
    let y = wd.config_dir().join("image.yaml");
    if y.is_file() {
        return crate::image::config::load(&y);
    }
    Ok(ImageConfig::default())
}

fn check_artifacts(meta: &Meta, req: &Request) -> Result<()> {
    for a in &req.artifacts {
        if !meta.images.contains_key(a) {
            let known: Vec<&str> = meta.images.keys().map(String::as_str).collect();
            bail!(
                "build {}: no image {a:?} in meta.json (it has: {})",
                meta.buildid,
                known.join(", ")
            );
        }
    }
    Ok(())
}

/// Remove `dir/name` unless an image of `meta` is that file; `leftover`: it is a
/// file an interrupted run left behind (said so in the log).
fn remove_if_unreferenced(dir: &Utf8Path, meta: &Meta, name: &str, leftover: bool) -> Result<()> {
    if meta.images.values().any(|a| a.path == name) {
        return Ok(());
    }
    let p = dir.join(name);
    match std::fs::remove_file(&p) {
        Ok(()) => {
            if leftover {
                tracing::info!("removed {p}, left by an interrupted run");
            } else {
                tracing::debug!("removed {p}");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {p}")),
    }
}

/// A build's arch directory.
struct BuildDir<'a> {
    wd: &'a Workdir,
    id: &'a str,
    arch: &'a str,
    dir: &'a Utf8Path,
}

/// Under the lock: re-read meta.json, check the entry is still `before`, rename
/// `tmp` to `final_name`, record `after`, write meta.json; then remove `old_name`.
fn commit_change(
    b: &BuildDir<'_>,
    key: &str,
    before: &Artifact,
    after: Artifact,
    tmp: tempfile::NamedTempFile,
) -> Result<()> {
    let (wd, id, arch, dir) = (b.wd, b.id, b.arch, b.dir);
    let lock = wd.lock()?;
    let mut meta = wd.read_meta(id, arch)?;
    match meta.images.get(key) {
        Some(a) if a == before => {}
        _ => bail!(
            "build {id}: images.{key} changed in meta.json while it was being processed; run again"
        ),
    }
    let final_path = dir.join(&after.path);
    let old_name = before.path.clone();
    tmp.persist(&final_path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into place {final_path}"))?;
    meta.images.insert(key.to_string(), after);
    if let Err(e) = wd.write_meta(&meta, arch, &lock) {
        let _ = std::fs::remove_file(&final_path);
        return Err(e);
    }
    crate::fsutil::fsync_dir(dir)?;
    drop(lock);
    remove_if_unreferenced(dir, &meta, &old_name, false)
}

fn temp_in(dir: &Utf8Path, name: &str) -> Result<(tempfile::NamedTempFile, Utf8PathBuf)> {
    let t = tempfile::Builder::new()
        .prefix(&format!("{TMP_PREFIX}{name}."))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {dir}"))?;
    let p = Utf8PathBuf::from_path_buf(t.path().to_path_buf())
        .map_err(|p| anyhow::anyhow!("non-UTF-8 path {}", p.display()))?;
    set_mode_0644(&p)?;
    Ok((t, p))
}

/// World-readable, like coreos-assembler's artifacts.
pub fn set_mode_0644(p: &Utf8Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting permissions of {p}"))
}

/// Compress a build's images.
pub fn compress(wd: &Workdir, req: &Request) -> Result<Vec<Done>> {
    let id = crate::image::build::resolve_build(wd, req.build.as_deref())?;
    let arch = req.arch.as_str();
    let dir = wd.build_arch_dir(&id, arch)?;
    let meta = wd.read_meta(&id, arch)?;
    check_artifacts(&meta, req)?;
    let cfg = build_image_config(wd, &dir, &meta)?;
    crate::scratch::remove_stale_tmp(&dir)?;
    let mut done = Vec::new();
    let keys: Vec<String> = meta.images.keys().cloned().collect();
    for key in keys {
        if !req.artifacts.is_empty() && !req.artifacts.contains(&key) {
            continue;
        }
        // Fresh each time: the previous image changed meta.json.
        let meta = wd.read_meta(&id, arch)?;
        let Some(art) = meta.images.get(&key).cloned() else {
            continue;
        };
        if art.skip_compression == Some(true) || super::platforms::never_compressed(&key) {
            tracing::info!("{key}: skipped (not compressed)");
            continue;
        }
        if art.uncompressed_sha256.is_some() || compressor_of(&art.path).is_some() {
            tracing::info!("{key}: already compressed ({})", art.path);
            if let Some(orig) = art
                .path
                .rsplit_once('.')
                .map(|(a, _)| a)
                .filter(|_| art.uncompressed_sha256.is_some())
            {
                remove_if_unreferenced(&dir, &meta, orig, true)?;
            }
            continue;
        }
        let c = req.compressor.unwrap_or_else(|| cfg.compressor_for(&key));
        let src = dir.join(&art.path);
        let new_name = format!("{}.{}", art.path, suffix(c));
        crate::names::validate_file_name(&new_name)?;
        let (tmp, tmp_path) = temp_in(&dir, &new_name)?;
        let t = std::time::Instant::now();
        let ((in_sum, in_size), (out_sum, out_size)) =
            filter_file(compress_command(c, req.fast)?, &src, &tmp_path, false)?;
        if in_sum != art.sha256 || art.size.is_some_and(|s| s != in_size) {
            bail!(
                "{src}: sha256 {in_sum} ({in_size} bytes) does not match meta.json images.{key} \
                 ({}); the image is corrupt or was changed",
                art.sha256
            );
        }
        let after = Artifact {
            path: new_name.clone(),
            sha256: out_sum,
            size: Some(out_size),
            uncompressed_sha256: Some(in_sum),
            uncompressed_size: Some(in_size),
            ..art.clone()
        };
        let b = BuildDir {
            wd,
            id: &id,
            arch,
            dir: &dir,
        };
        commit_change(&b, &key, &art, after, tmp)?;
        tracing::info!(
            "{key}: {new_name}: {} MiB -> {} MiB ({:.1} s)",
            in_size >> 20,
            out_size >> 20,
            t.elapsed().as_secs_f64()
        );
        done.push(Done {
            key: key.clone(),
            path: new_name,
        });
    }
    Ok(done)
}

/// Decompress a build's compressed images (those with `uncompressed-sha256`).
pub fn decompress(wd: &Workdir, req: &Request) -> Result<Vec<Done>> {
    let id = crate::image::build::resolve_build(wd, req.build.as_deref())?;
    let arch = req.arch.as_str();
    let dir = wd.build_arch_dir(&id, arch)?;
    let meta = wd.read_meta(&id, arch)?;
    check_artifacts(&meta, req)?;
    crate::scratch::remove_stale_tmp(&dir)?;
    let mut done = Vec::new();
    let keys: Vec<String> = meta.images.keys().cloned().collect();
    for key in keys {
        if !req.artifacts.is_empty() && !req.artifacts.contains(&key) {
            continue;
        }
        let meta = wd.read_meta(&id, arch)?;
        let Some(art) = meta.images.get(&key).cloned() else {
            continue;
        };
        let (Some(usum), Some(c)) = (art.uncompressed_sha256.clone(), compressor_of(&art.path))
        else {
            // Not compressed (or not by `compress`): remove a compressed copy an
            // interrupted decompress left behind.
            if art.uncompressed_sha256.is_none() && compressor_of(&art.path).is_none() {
                for c in [Compressor::Xz, Compressor::Gzip, Compressor::Zstd] {
                    let name = format!("{}.{}", art.path, suffix(c));
                    remove_if_unreferenced(&dir, &meta, &name, true)?;
                }
            }
            continue;
        };
        let Some((new_name, _)) = art.path.rsplit_once('.') else {
            continue;
        };
        let new_name = new_name.to_string();
        crate::names::validate_file_name(&new_name)?;
        let src = dir.join(&art.path);
        let (tmp, tmp_path) = temp_in(&dir, &new_name)?;
        let t = std::time::Instant::now();
        let ((in_sum, _), (out_sum, out_size)) =
            filter_file(decompress_command(c)?, &src, &tmp_path, true)?;
        if in_sum != art.sha256 {
            bail!(
                "{src}: sha256 {in_sum} does not match meta.json images.{key} ({}); the file is \
                 corrupt or was changed",
                art.sha256
            );
        }
        if out_sum != usum || art.uncompressed_size.is_some_and(|s| s != out_size) {
            bail!(
                "{src}: decompresses to sha256 {out_sum} ({out_size} bytes), not meta.json's \
                 uncompressed-sha256 {usum}"
            );
        }
        let after = Artifact {
            path: new_name.clone(),
            sha256: usum,
            size: Some(out_size),
            uncompressed_sha256: None,
            uncompressed_size: None,
            ..art.clone()
        };
        let b = BuildDir {
            wd,
            id: &id,
            arch,
            dir: &dir,
        };
        commit_change(&b, &key, &art, after, tmp)?;
        tracing::info!(
            "{key}: {new_name}: {} MiB ({:.1} s)",
            out_size >> 20,
            t.elapsed().as_secs_f64()
        );
        done.push(Done {
            key: key.clone(),
            path: new_name,
        });
    }
    Ok(done)
}

/// Decompress `src` (compressed with `c`) to `dst`, checking the result's sha256.
pub fn decompress_to(
    src: &Utf8Path,
    c: Compressor,
    dst: &Utf8Path,
    want_sha256: &str,
) -> Result<()> {
    let (_, (sum, _)) = filter_file(decompress_command(c)?, src, dst, true)?;
    if sum != want_sha256 {
        bail!("{src}: decompresses to sha256 {sum}, not the expected {want_sha256}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(compressor_of("a.qcow2.xz"), Some(Compressor::Xz));
        assert_eq!(compressor_of("a.tar.gz"), Some(Compressor::Gzip));
        assert_eq!(compressor_of("a.raw.zst"), Some(Compressor::Zstd));
        assert_eq!(compressor_of("a.qcow2"), None);
        assert_eq!(suffix(Compressor::Zstd), "zst");
    }

    #[test]
    fn round_trip_through_each_tool() -> Result<()> {
        let td = tempfile::tempdir()?;
        let d = Utf8Path::from_path(td.path()).context("utf8")?;
        let src = d.join("src");
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(&src)?;
            f.set_len(3 << 20)?;
            f.write_all_at(b"some data", 1 << 20)?;
        }
        let (want, _) = crate::fsutil::sha256_file(&src)?;
        for c in [Compressor::Xz, Compressor::Gzip, Compressor::Zstd] {
            let cmd = match compress_command(c, true) {
                Ok(cmd) => cmd,
                Err(_) => continue,
            };
            let z = d.join(format!("z.{}", suffix(c)));
            let ((isum, isize), (zsum, zsize)) = filter_file(cmd, &src, &z, false)?;
            assert_eq!((isum.as_str(), isize), (want.as_str(), 3 << 20));
            assert_eq!(crate::fsutil::sha256_file(&z)?, (zsum, zsize));
            let back = d.join("back");
            decompress_to(&z, c, &back, &want)?;
            // Written sparse: the 3 MiB of mostly zeros take far less.
            let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&back)?);
            assert!(blocks * 512 < 1 << 20, "{c:?}: {blocks} blocks");
            assert!(decompress_to(&z, c, &back, &"0".repeat(64)).is_err());
        }
        Ok(())
    }
}
