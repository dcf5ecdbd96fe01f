//! KubeVirt's container disk: an OCI image archive (a tar of an OCI image layout,
//! what `oci-archive:` transports and `skopeo copy` read) whose single layer holds
//! the qcow2 under `disk/`, readable by KubeVirt's qemu user (uid and gid 107).
//!
//! ```text
//! oci-layout                     {"imageLayoutVersion": "1.0.0"}
//! index.json                     -> the manifest
//! blobs/sha256/<manifest>        -> config + one layer
//! blobs/sha256/<config>          architecture, os, rootfs.diff_ids
//! blobs/sha256/<layer>           tar: disk/, disk/<name>.qcow2
//! ```
//!
//! The layer is an uncompressed tar (`application/vnd.oci.image.layer.v1.tar`): its
//! digest is learned by streaming it once through SHA-256, then the archive is written
//! in one pass. coreos-assembler names the disk `disk/coreos.img`; here it keeps its
//! `.qcow2` suffix (KubeVirt probes the format, not the name).

use std::io::Write;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use serde_json::json;

use super::archive::{self, HashWriter, TarEntry};

/// KubeVirt's qemu user and group.
pub const QEMU_UID: u32 = 107;

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// The OCI (Go) architecture name of a coreos-assembler basearch.
pub fn oci_arch(arch: &str) -> Result<&'static str> {
    Ok(match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => bail!("no OCI architecture name for {other}"),
    })
}

/// What goes into the image.
#[derive(Debug, Clone)]
pub struct DiskImage<'a> {
    pub qcow2: &'a Utf8Path,
    /// File name under `disk/`.
    pub disk_name: &'a str,
    pub arch: &'a str,
    /// Seconds since the epoch for file times and `created`.
    pub mtime: u64,
    /// `org.opencontainers.image.ref.name` in index.json (a tag).
    pub ref_name: &'a str,
    /// Labels for the image config (version, source).
    pub labels: serde_json::Map<String, serde_json::Value>,
}

fn write_layer(w: &mut impl Write, d: &DiskImage<'_>, size: u64) -> Result<()> {
    archive::tar_member(
        w,
        &TarEntry {
            name: "disk/",
            mode: 0o555,
            uid: QEMU_UID,
            gid: QEMU_UID,
            size: 0,
            mtime: d.mtime,
            kind: b'5',
        },
        &mut std::io::empty(),
    )?;
    let name = format!("disk/{}", d.disk_name);
    let mut f = std::fs::File::open(d.qcow2).with_context(|| format!("opening {}", d.qcow2))?;
    archive::tar_member(
        w,
        &TarEntry {
            name: &name,
            mode: 0o444,
            uid: QEMU_UID,
            gid: QEMU_UID,
            size,
            mtime: d.mtime,
            kind: b'0',
        },
        &mut f,
    )?;
    w.write_all(&archive::TAR_END)?;
    Ok(())
}

fn rfc3339(secs: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Write the OCI archive to `out`; returns (sha256, size) of the archive.
pub fn write_archive(out: &Utf8Path, d: &DiskImage<'_>) -> Result<(String, u64)> {
    let size = std::fs::metadata(d.qcow2)
        .with_context(|| format!("reading {}", d.qcow2))?
        .len();
    // Pass 1: the layer's digest.
    let mut sink = archive::hash_sink();
    write_layer(&mut sink, d, size).with_context(|| format!("reading {}", d.qcow2))?;
    let (layer_digest, layer_size, _) = sink.finish();

    let config = json!({
        "created": rfc3339(d.mtime),
        "architecture": oci_arch(d.arch)?,
        "os": "linux",
        "config": { "Labels": d.labels },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created": rfc3339(d.mtime), "created_by": "cosa-extend --platform kubevirt" }],
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&config));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": CONFIG_TYPE, "digest": format!("sha256:{config_digest}"), "size": config.len() },
        "layers": [{ "mediaType": LAYER_TYPE, "digest": format!("sha256:{layer_digest}"), "size": layer_size }],
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest));
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": d.ref_name },
        }],
    });
    let index = serde_json::to_vec(&index)?;

    // Pass 2: the archive.
    let f = std::fs::File::create(out).with_context(|| format!("creating {out}"))?;
    let mut w = HashWriter::new(std::io::BufWriter::with_capacity(1 << 20, f));
    (|| -> Result<()> {
        let m = d.mtime;
        archive::tar_bytes(
            &mut w,
            "oci-layout",
            0o644,
            m,
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        archive::tar_bytes(&mut w, "index.json", 0o644, m, &index)?;
        for dir in ["blobs/", "blobs/sha256/"] {
            archive::tar_member(
                &mut w,
                &TarEntry {
                    name: dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    mtime: m,
                    kind: b'5',
                },
                &mut std::io::empty(),
            )?;
        }
        archive::tar_bytes(
            &mut w,
            &format!("blobs/sha256/{manifest_digest}"),
            0o644,
            m,
            &manifest,
        )?;
        archive::tar_bytes(
            &mut w,
            &format!("blobs/sha256/{config_digest}"),
            0o644,
            m,
            &config,
        )?;
        w.write_all(&archive::tar_header(&TarEntry {
            name: &format!("blobs/sha256/{layer_digest}"),
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: layer_size,
            mtime: m,
            kind: b'0',
        })?)?;
        let mut layer = HashWriter::new(&mut w);
        write_layer(&mut layer, d, size)?;
        let (again, n, _) = layer.finish();
        if again != layer_digest || n != layer_size {
            bail!("{} changed while it was being archived", d.qcow2);
        }
        w.write_all(&[0u8; archive::BLOCK][..archive::tar_padding(layer_size)])?;
        w.write_all(&archive::TAR_END)?;
        w.flush()?;
        Ok(())
    })()
    .with_context(|| format!("writing {out}"))
    .map_err(|e| super::derive::explain_full(e, out))?;
    let (sum, len, bw) = w.finish();
    bw.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {out}"))?;
    Ok((sum, len))
}
