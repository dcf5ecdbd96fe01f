//! Deriving a platform's disk from the base disk without rebuilding it.
//!
//! The base is the build's `qemu` disk (image.yaml `size` GiB, as coreos-assembler's
//! cloud images are). Platforms differ from it only in kernel arguments, which live
//! on the boot filesystem (partition `boot`, ext4): in the BLS entries under
//! `/loader/entries/` and in `/grub2/grub.cfg`, generated from them. So:
//!
//! 1. Once per call: read the base's GPT (its first MiB, through `qemu-img dd`),
//!    copy the boot partition out (`qemu-img convert` of that byte range, sparse) and
//!    read its BLS entries with `debugfs`.
//! 2. Per platform: a sparse copy of that boot filesystem image; the BLS `options`
//!    line rewritten (the base platform's kernel arguments out, the platform's in)
//!    and grub.cfg regenerated, both replaced with `debugfs -w` and read back.
//! 3. The output is written by one `qemu-img convert` whose inputs are concatenated
//!    views: the base before the boot partition, the edited boot filesystem, the base
//!    after it (`json:` raw nodes with `offset`/`size` over the base). Nothing of the
//!    base is copied but the 384 MiB boot partition (its data, a few tens of MiB), and
//!    the conversion costs what a direct `qemu-img convert` of the base costs.
//!
//! A platform with a larger fixed disk (ibmcloud: 100 GiB) gets a new GPT for that
//! size (same partitions, `root` reaching the new end; the root filesystem grows on
//! first boot as on every CoreOS disk) through a small sparse file that supplies the
//! first and last MiB.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};

use super::bootfs::{self, NewFile};
use super::platforms::BuiltinBoot;
use crate::cmd::CommandRunExt;
use crate::image::bls::BlsEntry;
use crate::image::build::PlatformBoot;
use crate::image::gpt;
use crate::image::layout::{DISK_GUID, Layout, MIB, types};

/// A tree's `/usr/share/coreos-assembler/platforms.json`: arch → platform → settings.
pub type PlatformsJson = HashMap<String, HashMap<String, PlatformBoot>>;

/// Where BLS entries are on the boot filesystem (`loader` is a symlink to
/// `loader.0` or `loader.1`, which debugfs follows).
pub const ENTRIES_DIR: &str = "/loader/entries";
pub const GRUB_CFG_DIR: &str = "/grub2";
pub const GRUB_CFG: &str = "grub.cfg";

/// The kernel arguments and GRUB console commands of a platform: the tree's
/// platforms.json when it has one, else the built-in table.
pub fn platform_boot(
    pj: Option<&PlatformsJson>,
    arch: &str,
    ignition_id: &str,
) -> (Vec<String>, Vec<String>) {
    match pj {
        Some(pj) => match pj.get(arch).and_then(|a| a.get(ignition_id)) {
            Some(e) => (e.kernel_arguments.clone(), e.grub_commands.clone()),
            None => (Vec::new(), Vec::new()),
        },
        None => match super::platforms::builtin_boot(arch, ignition_id) {
            Some(BuiltinBoot {
                kernel_arguments,
                grub_commands,
            }) => (
                kernel_arguments.iter().map(|s| s.to_string()).collect(),
                grub_commands.iter().map(|s| s.to_string()).collect(),
            ),
            None => (Vec::new(), Vec::new()),
        },
    }
}

/// Replace one platform's kernel arguments with another's: every
/// `ignition.platform.id=` goes, each of `remove` goes once (its last occurrence, so
/// that the same argument from image.yaml's `extra-kargs` earlier on the line stays),
/// then `ignition.platform.id=<id>` and `add` are appended.
pub fn swap_platform_kargs(
    kargs: &[String],
    remove: &[String],
    id: &str,
    add: &[String],
) -> Vec<String> {
    let mut k: Vec<String> = kargs
        .iter()
        .filter(|a| !a.starts_with("ignition.platform.id="))
        .cloned()
        .collect();
    for r in remove
        .iter()
        .filter(|r| !r.starts_with("ignition.platform.id="))
    {
        if let Some(i) = k.iter().rposition(|a| a == r) {
            k.remove(i);
        }
    }
    k.push(format!("ignition.platform.id={id}"));
    k.extend(add.iter().cloned());
    k
}

/// A `qemu-img` block node for a file.
pub fn file_node(path: &Utf8Path, format: &str) -> Value {
    let file = json!({"driver": "file", "filename": path.as_str()});
    if format == "raw" {
        file
    } else {
        json!({"driver": format, "file": file})
    }
}

/// A raw view of `len` bytes at `offset` of a node.
pub fn slice(node: &Value, offset: u64, len: u64) -> Value {
    json!({"driver": "raw", "offset": offset, "size": len, "file": node})
}

/// A node as a `qemu-img` file name.
pub fn json_name(v: &Value) -> String {
    format!("json:{v}")
}

/// The base disk, read once per call.
#[derive(Debug, Clone)]
pub struct Base {
    /// The disk file (the build's qemu qcow2, or a decompressed copy of it).
    pub path: Utf8PathBuf,
    /// Its qemu-img format (`qcow2` or `raw`).
    pub format: String,
    /// Virtual size.
    pub size: u64,
    pub arch: String,
    /// The first partition's offset (everything before it: MBR, GPT).
    pub head_len: u64,
    pub boot_offset: u64,
    pub boot_size: u64,
    /// End of the last partition.
    pub data_end: u64,
    /// The base's first `head_len` bytes, raw.
    pub head: Utf8PathBuf,
    /// The boot filesystem, raw and sparse.
    pub boot_img: Utf8PathBuf,
    /// The base's BLS entries, newest first.
    pub entries: Vec<BlsEntry>,
}

/// Virtual size of a disk image.
pub fn virtual_size(path: &Utf8Path, format: &str) -> Result<u64> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", format])
        .arg(path)
        .run_get_string()?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("qemu-img info {path}"))?;
    v["virtual-size"]
        .as_u64()
        .with_context(|| format!("qemu-img info {path}: no virtual-size"))
}

/// Free bytes for unprivileged users on the filesystem holding `path`'s directory.
pub fn free_bytes(path: &Utf8Path) -> Option<u64> {
    let dir = path.parent().filter(|d| !d.as_str().is_empty())?;
    let st = rustix::fs::statvfs(dir.as_std_path()).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Tools do not always say ENOSPC when a disk fills (qemu-img's VMDK writer reports
/// EINVAL on a full tmpfs): when a write to `out` failed and its filesystem is
/// (nearly) full, say so.
pub fn explain_full(e: anyhow::Error, out: &Utf8Path) -> anyhow::Error {
    match free_bytes(out) {
        Some(free) if free < 4 * MIB => {
            let dir = out.parent().unwrap_or(out);
            e.context(format!(
                "No space left on device: {dir} has {} KiB free",
                free / 1024
            ))
        }
        _ => e,
    }
}

/// `qemu-img convert` of `inputs` (concatenated) into `out`.
pub fn convert(
    inputs: &[Value],
    out_format: &str,
    options: &str,
    compressed: bool,
    out: &Utf8Path,
) -> Result<()> {
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-O", out_format]);
    if !options.is_empty() {
        c.args(["-o", options]);
    }
    if compressed {
        c.arg("-c");
    }
    for i in inputs {
        c.arg(json_name(i));
    }
    c.arg(out);
    tracing::debug!("exec: {}", crate::cmd::describe(&c));
    let o = c
        .stdin(Stdio::null())
        .output()
        .context("running qemu-img")?;
    if !o.status.success() {
        let e = anyhow::anyhow!(
            "qemu-img convert -O {out_format} of {} input(s) to {out} failed ({}): {}",
            inputs.len(),
            o.status,
            crate::cmd::tail(&o.stderr)
        );
        return Err(explain_full(e, out));
    }
    Ok(())
}

impl Base {
    /// Read the base: GPT, boot partition, BLS entries. `scratch` receives the
    /// extracted head and boot filesystem.
    pub fn open(path: &Utf8Path, format: &str, arch: &str, scratch: &Utf8Path) -> Result<Base> {
        let size = virtual_size(path, format)?;
        let node = file_node(path, format);
        // GPT: primary header and entries are within the first MiB.
        let head = scratch.join("base-head.raw");
        let probe = MIB.min(size);
        convert(&[slice(&node, 0, probe)], "raw", "", false, &head)
            .with_context(|| format!("reading the partition table of {path}"))?;
        let table = gpt::read(&head, 512).with_context(|| {
            format!("{path}: not a disk made by cosa-image (no GPT with 512-byte sectors)")
        })?;
        let boot = table
            .parts
            .iter()
            .find(|p| p.name == "boot" && p.type_guid == types::XBOOTLDR)
            .with_context(|| format!("{path}: no partition named boot (type XBOOTLDR)"))?;
        let head_len = table
            .parts
            .iter()
            .map(|p| p.first_lba * 512)
            .min()
            .context("no partitions")?;
        let data_end = table
            .parts
            .iter()
            .map(|p| (p.last_lba + 1) * 512)
            .max()
            .unwrap_or(0);
        if data_end > size || head_len > MIB {
            bail!("{path}: partition table does not fit the disk");
        }
        let boot_offset = boot.first_lba * 512;
        let boot_size = (boot.last_lba + 1 - boot.first_lba) * 512;
        // Keep just the head for later (the first partition's offset).
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&head)
            .with_context(|| format!("opening {head}"))?;
        f.set_len(head_len)
            .with_context(|| format!("truncating {head}"))?;
        drop(f);
        let boot_img = scratch.join("base-boot.img");
        convert(
            &[slice(&node, boot_offset, boot_size)],
            "raw",
            "",
            false,
            &boot_img,
        )
        .with_context(|| format!("copying the boot partition out of {path}"))?;
        let entries = read_entries(&boot_img)
            .with_context(|| format!("{path}: reading the boot filesystem"))?;
        Ok(Base {
            path: path.to_path_buf(),
            format: format.to_string(),
            size,
            arch: arch.to_string(),
            head_len,
            boot_offset,
            boot_size,
            data_end,
            head,
            boot_img,
            entries,
        })
    }

    fn node(&self) -> Value {
        file_node(&self.path, &self.format)
    }

    /// The inputs for a disk of `target` bytes with `boot` (an edited copy of the boot
    /// filesystem) in place of the base's. A larger `target` gets a new GPT, written
    /// to a sparse file in `scratch`.
    pub fn pieces(&self, boot: &Utf8Path, target: u64, scratch: &Utf8Path) -> Result<Vec<Value>> {
        let base = self.node();
        let boot_end = self.boot_offset + self.boot_size;
        let boot_node = slice(&file_node(boot, "raw"), 0, self.boot_size);
        if target == self.size {
            return Ok(vec![
                slice(&base, 0, self.boot_offset),
                boot_node,
                slice(&base, boot_end, self.size - boot_end),
            ]);
        }
        if target < self.size {
            bail!("cannot shrink a {} byte disk to {target}", self.size);
        }
        let gpt_file = self.grown_gpt(target, scratch)?;
        let g = file_node(&gpt_file, "raw");
        Ok(vec![
            slice(&g, 0, self.head_len),
            slice(&base, self.head_len, self.boot_offset - self.head_len),
            boot_node,
            slice(&base, boot_end, self.data_end - boot_end),
            slice(&g, self.data_end, target - self.data_end),
        ])
    }

    /// A sparse file of `target` bytes holding the base's MBR boot code and a GPT for
    /// that size with the same partitions (the last one extended).
    fn grown_gpt(&self, target: u64, scratch: &Utf8Path) -> Result<Utf8PathBuf> {
        let layout = Layout::for_arch(&self.arch)?;
        let placed = layout.place(target)?;
        let base_table = gpt::read(&self.head, 512)?;
        for (p, b) in placed.iter().zip(&base_table.parts) {
            let last = p.spec.number as usize == placed.len();
            if p.offset != b.first_lba * 512
                || (!last && p.size != (b.last_lba + 1 - b.first_lba) * 512)
                || p.spec.name != b.name
            {
                bail!(
                    "{}: its partitions are not cosa-image's {} layout; cannot resize it",
                    self.path,
                    self.arch
                );
            }
        }
        let path = scratch.join(format!("gpt-{target}.raw"));
        let f = crate::image::disk::create_sparse(&path, target)?;
        let mut head = vec![0u8; self.head_len as usize];
        std::fs::File::open(&self.head)
            .and_then(|mut h| h.read_exact(&mut head))
            .with_context(|| format!("reading {}", self.head))?;
        use std::os::unix::fs::FileExt;
        f.write_all_at(&head, 0)
            .with_context(|| format!("writing {path}"))?;
        gpt::write(&f, &path, target, 512, DISK_GUID, &placed)?;
        // gpt::write wrote a fresh protective MBR: put GRUB's boot code back.
        f.write_all_at(&head[..440], 0)
            .with_context(|| format!("writing {path}"))?;
        Ok(path)
    }
}

/// The BLS entries of a boot filesystem image, newest first.
pub fn read_entries(boot_img: &Utf8Path) -> Result<Vec<BlsEntry>> {
    let mut out = Vec::new();
    for e in bootfs::list_dir(boot_img, ENTRIES_DIR)? {
        if !e.is_file() || !e.name.ends_with(".conf") {
            continue;
        }
        let path = format!("{ENTRIES_DIR}/{}", e.name);
        let bytes = bootfs::cat(boot_img, &path)?;
        let text = String::from_utf8(bytes).with_context(|| format!("{path}: not UTF-8"))?;
        out.push(BlsEntry::parse(&e.name, &text, &path)?);
    }
    if out.is_empty() {
        bail!("no BLS entries in {ENTRIES_DIR}");
    }
    out.sort_by(|a, b| {
        b.version()
            .cmp(&a.version())
            .then(a.file_name.cmp(&b.file_name))
    });
    Ok(out)
}

/// Rewrite the kernel arguments of a boot filesystem image (an edited copy): every BLS
/// entry's `options` and grub.cfg. Returns the new entries.
pub fn set_platform(
    boot_img: &Utf8Path,
    base_entries: &[BlsEntry],
    remove: &[String],
    ignition_id: &str,
    add: &[String],
    console: &[String],
    scratch: &Utf8Path,
) -> Result<Vec<BlsEntry>> {
    let entries: Vec<BlsEntry> = base_entries
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.set_kargs(&swap_platform_kargs(&e.kargs(), remove, ignition_id, add));
            e
        })
        .collect();
    let cfg = crate::image::grub::grub_cfg(&entries, console)?;
    let texts: Vec<String> = entries.iter().map(BlsEntry::to_text).collect();
    let mut files: Vec<NewFile<'_>> = entries
        .iter()
        .zip(&texts)
        .map(|(e, t)| NewFile {
            dir: ENTRIES_DIR,
            name: &e.file_name,
            contents: t.as_bytes(),
        })
        .collect();
    files.push(NewFile {
        dir: GRUB_CFG_DIR,
        name: GRUB_CFG,
        contents: cfg.as_bytes(),
    });
    bootfs::replace_files(boot_img, &files, scratch)?;
    Ok(entries)
}

/// SHA-256 and length of a file, reading only its data: holes are hashed as zeros
/// from memory (a fixed VHD or raw disk is mostly holes).
pub fn sha256_sparse(path: &Utf8Path) -> Result<(String, u64)> {
    use rustix::fs::{SeekFrom, seek};
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
    static ZEROS: [u8; 1 << 16] = [0u8; 1 << 16];
    let f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading {path}"))?
        .len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    let zeros = |h: &mut Sha256, mut n: u64| {
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            h.update(&ZEROS[..k]);
            n -= k as u64;
        }
    };
    while pos < len {
        let data = match seek(&f, SeekFrom::Data(pos)) {
            Ok(d) => d.min(len),
            Err(rustix::io::Errno::NXIO) => len,
            Err(e) => return Err(e).with_context(|| format!("seeking in {path}")),
        };
        zeros(&mut h, data - pos);
        if data >= len {
            pos = len;
            break;
        }
        let hole = match seek(&f, SeekFrom::Hole(data)) {
            Ok(x) => x.min(len),
            Err(e) => return Err(e).with_context(|| format!("seeking in {path}")),
        };
        let mut p = data;
        while p < hole {
            let n = ((hole - p) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], p)
                .with_context(|| format!("reading {path}"))?;
            h.update(&buf[..n]);
            p += n as u64;
        }
        pos = hole;
    }
    Ok((hex::encode(h.finalize()), len.max(pos)))
}

/// `tar --sparse --format=oldgnu` of `dir/member`, compressed with gzip (pigz when
/// installed) into `out`; returns (sha256, size) of `out`.
pub fn tar_gz(dir: &Utf8Path, member: &str, mtime: u64, out: &Utf8Path) -> Result<(String, u64)> {
    let mut tar = Command::new("tar");
    tar.args([
        "--format=oldgnu",
        "--sparse",
        "--numeric-owner",
        "--owner=0",
        "--group=0",
        &format!("--mtime=@{mtime}"),
        "-C",
    ])
    .arg(dir)
    .args(["-cf", "-", member]);
    let gz = super::compress::gzip_command(false)?;
    pipe_to_file(tar, gz, out)
}

/// Run `producer | filter > out`, hashing what `filter` writes.
pub fn pipe_to_file(
    mut producer: Command,
    mut filter: Command,
    out: &Utf8Path,
) -> Result<(String, u64)> {
    let pdesc = crate::cmd::describe(&producer);
    let fdesc = crate::cmd::describe(&filter);
    tracing::debug!("exec: {pdesc} | {fdesc} > {out}");
    let mut p = producer
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {pdesc}"))?;
    let pout = p.stdout.take().context("no stdout")?;
    let mut fchild = match filter
        .stdin(Stdio::from(pout))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = p.kill();
            let _ = p.wait();
            return Err(e).with_context(|| format!("running {fdesc}"));
        }
    };
    let mut fout = fchild.stdout.take().context("no stdout")?;
    let file = std::fs::File::create(out).with_context(|| format!("creating {out}"))?;
    let mut w = super::archive::HashWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let copied = std::io::copy(&mut fout, &mut w).and_then(|_| w.flush());
    // A failed write stops the copy: let the filter see a closed pipe and exit.
    drop(fout);
    let pst = p
        .wait_with_output()
        .with_context(|| format!("running {pdesc}"))?;
    let fst = fchild
        .wait_with_output()
        .with_context(|| format!("running {fdesc}"))?;
    if !pst.status.success() {
        bail!(
            "{pdesc} failed ({}): {}",
            pst.status,
            crate::cmd::tail(&pst.stderr)
        );
    }
    if !fst.status.success() {
        bail!(
            "{fdesc} failed ({}): {}",
            fst.status,
            crate::cmd::tail(&fst.stderr)
        );
    }
    copied
        .with_context(|| format!("writing {out}"))
        .map_err(|e| explain_full(e, out))?;
    let (sum, len, bw) = w.finish();
    bw.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {out}"))?;
    Ok((sum, len))
}

/// A sparse copy of a file (holes stay holes).
pub fn sparse_copy(src: &Utf8Path, dst: &Utf8Path) -> Result<()> {
    let len = std::fs::metadata(src)
        .with_context(|| format!("reading {src}"))?
        .len();
    let f = crate::image::disk::create_sparse(dst, len)?;
    crate::image::disk::copy_sparse(src, &f, dst, 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn kargs_swap() {
        let k = v(&[
            "rw",
            "console=ttyS0",
            "root=LABEL=root",
            "ignition.platform.id=qemu",
            "console=tty0",
            "console=ttyS0,115200n8",
        ]);
        let out = swap_platform_kargs(
            &k,
            &v(&[
                "ignition.platform.id=qemu",
                "console=tty0",
                "console=ttyS0,115200n8",
            ]),
            "aws",
            &v(&["console=tty0", "console=ttyS0,115200n8"]),
        );
        assert_eq!(
            out,
            v(&[
                "rw",
                "console=ttyS0",
                "root=LABEL=root",
                "ignition.platform.id=aws",
                "console=tty0",
                "console=ttyS0,115200n8"
            ])
        );
        // image.yaml's own console=ttyS0 stays when the platform's goes.
        let k = v(&[
            "console=ttyS0",
            "ignition.platform.id=qemu",
            "console=ttyS0",
        ]);
        let out = swap_platform_kargs(&k, &v(&["console=ttyS0"]), "metal", &[]);
        assert_eq!(out, v(&["console=ttyS0", "ignition.platform.id=metal"]));
    }

    #[test]
    fn consoles_from_platforms_json_or_builtin() {
        let pj: PlatformsJson = serde_json::from_str(
            r#"{"x86_64": {"aws": {"grub_commands": ["g"], "kernel_arguments": ["k=1"]}}}"#,
        )
        .unwrap();
        assert_eq!(
            platform_boot(Some(&pj), "x86_64", "aws"),
            (v(&["k=1"]), v(&["g"]))
        );
        // A tree's platforms.json is the whole truth: absent means none.
        assert_eq!(platform_boot(Some(&pj), "x86_64", "gcp"), (vec![], vec![]));
        let (k, g) = platform_boot(None, "x86_64", "gcp");
        assert_eq!(k, v(&["console=tty0", "console=ttyS0,115200n8"]));
        assert_eq!(g.len(), 3);
    }

    #[test]
    fn json_nodes() {
        let n = file_node(Utf8Path::new("/a \"b\".qcow2"), "qcow2");
        let s = json_name(&slice(&n, 1, 2));
        assert!(s.starts_with("json:{"), "{s}");
        let back: Value = serde_json::from_str(&s[5..]).unwrap();
        assert_eq!(back["file"]["file"]["filename"], "/a \"b\".qcow2");
        assert_eq!(back["offset"], 1);
        assert_eq!(file_node(Utf8Path::new("/x"), "raw")["driver"], "file");
    }

    #[test]
    fn sparse_hash_matches_plain_hash() -> Result<()> {
        use std::os::unix::fs::FileExt;
        let td = tempfile::tempdir()?;
        let p =
            Utf8PathBuf::from_path_buf(td.path().join("s")).map_err(|_| anyhow::anyhow!("utf8"))?;
        let f = std::fs::File::create(&p)?;
        f.set_len(40 << 20)?;
        f.write_all_at(b"data", 5 << 20)?;
        f.write_all_at(b"end", (40 << 20) - 3)?;
        drop(f);
        let (a, n) = sha256_sparse(&p)?;
        let (b, m) = crate::fsutil::sha256_file(&p)?;
        assert_eq!((a, n), (b, m));
        let e = td.path().join("empty");
        std::fs::write(&e, b"")?;
        let e = Utf8PathBuf::from_path_buf(e).map_err(|_| anyhow::anyhow!("utf8"))?;
        assert_eq!(sha256_sparse(&e)?.1, 0);
        Ok(())
    }
}
