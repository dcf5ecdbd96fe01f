//! What "nothing lost, nothing half-written" means, checked after faults and crashes:
//! a work directory or a store in which every builds.json entry has a complete
//! meta.json whose artifacts exist with matching sha256, and `latest` points at a
//! complete build.

use anyhow::{Context, Result, ensure};
use camino::Utf8Path;
use cosa::builds::BuildsJson;
use cosa::meta::Meta;
use cosa::workdir::Workdir;
use sha2::{Digest, Sha256};

use crate::store_servers::{BUCKET, S3Server};

/// Every builds.json entry of the work directory at `root` is complete, and `latest`
/// (if any) points at one of them. Returns the number of builds checked.
pub fn check_workdir(root: &Utf8Path) -> Result<usize> {
    let wd = Workdir::open(root.to_owned())?;
    let builds = wd.read_builds()?;
    for b in &builds.builds {
        for arch in &b.arches {
            let meta = wd.read_meta(&b.id, arch)?;
            let dir = wd.build_arch_dir(&b.id, arch)?;
            for (key, a) in &meta.images {
                let p = dir.join(&a.path);
                let (sum, size) = cosa::fsutil::sha256_file(&p)
                    .with_context(|| format!("build {} {arch}: images.{key}", b.id))?;
                ensure!(
                    sum == a.sha256,
                    "{p}: sha256 {sum}, meta.json says {}",
                    a.sha256
                );
                if let Some(want) = a.size {
                    ensure!(size == want, "{p}: {size} bytes, meta.json says {want}");
                }
            }
        }
    }
    match wd.latest_id()? {
        Some(id) => ensure!(
            builds.get(&id).is_some(),
            "latest points at {id}, which builds.json does not list"
        ),
        None => ensure!(
            builds.builds.is_empty(),
            "builds.json lists builds but there is no latest"
        ),
    }
    Ok(builds.builds.len())
}

/// An object's bytes, read with a plain SDK client (never through a fault proxy).
pub fn s3_get(rt: &tokio::runtime::Runtime, s: &S3Server, key: &str) -> Result<Option<Vec<u8>>> {
    match rt.block_on(s.sdk().get_object().bucket(BUCKET).key(key).send()) {
        Ok(o) => Ok(Some(rt.block_on(o.body.collect())?.into_bytes().to_vec())),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "{key}: {}",
            aws_sdk_s3::error::DisplayErrorContext(e)
        )),
    }
}

/// The store at `prefix` is consistent: every builds.json entry has its meta.json,
/// and every artifact meta.json lists is there with the sha256 it states. Returns
/// the store's builds.json (None when there is none).
pub fn check_s3_store(
    rt: &tokio::runtime::Runtime,
    s: &S3Server,
    prefix: &str,
) -> Result<Option<BuildsJson>> {
    let k = format!("{prefix}/builds.json");
    let Some(bytes) = s3_get(rt, s, &k)? else {
        return Ok(None);
    };
    let builds = BuildsJson::parse(&bytes, &k)?;
    for b in &builds.builds {
        for arch in &b.arches {
            let mk = format!("{prefix}/{}/{arch}/meta.json", b.id);
            let m = s3_get(rt, s, &mk)?.with_context(|| format!("{k} lists {mk}, missing"))?;
            let meta = Meta::parse(&m, &mk)?;
            for (key, a) in &meta.images {
                let ak = format!("{prefix}/{}/{arch}/{}", b.id, a.path);
                let data = s3_get(rt, s, &ak)?
                    .with_context(|| format!("{mk} lists images.{key} {ak}, missing"))?;
                let sum = hex::encode(Sha256::digest(&data));
                ensure!(
                    sum == a.sha256,
                    "{ak}: sha256 {sum}, {mk} says {}",
                    a.sha256
                );
            }
        }
    }
    Ok(Some(builds))
}
