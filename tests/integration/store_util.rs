//! Builds with real artifacts for the store tests, and comparisons of build trees.

use anyhow::Result;
use camino::Utf8Path;
use cosa::meta::{Artifact, Meta};
use sha2::{Digest, Sha256};

use crate::common::{TestWorkdir, minimal_meta};

/// Deterministic pseudo-random bytes (fast, incompressible enough for transfers).
pub fn bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len as usize];
    rng.fill(&mut v);
    v
}

/// Record build `id` for `arch` with one artifact per size (images keys `a0`, `a1`,
/// ...), a commitmeta.json and a manifest-lock, as a compose and image build would.
pub fn make_build(t: &TestWorkdir, id: &str, arch: &str, sizes: &[u64]) -> Result<Meta> {
    let wd = &t.wd;
    let lock = wd.lock()?;
    let dir = wd.build_arch_dir(id, arch)?;
    std::fs::create_dir_all(&dir)?;
    let mut meta = minimal_meta(id, arch);
    for (i, size) in sizes.iter().enumerate() {
        let name = format!("example-os-{id}-a{i}.{arch}.raw");
        let data = bytes(i as u64 * 7919 + id.len() as u64, *size);
        std::fs::write(dir.join(&name), &data)?;
        meta.images.insert(
            format!("a{i}"),
            Artifact {
                path: name,
                sha256: hex::encode(Sha256::digest(&data)),
                size: Some(*size),
                uncompressed_sha256: None,
                uncompressed_size: None,
                skip_compression: None,
                extra: Default::default(),
            },
        );
    }
    std::fs::write(dir.join("commitmeta.json"), b"{\"version\": \"x\"}\n")?;
    std::fs::write(
        dir.join(format!("manifest-lock.generated.{arch}.json")),
        b"{\"packages\": {}}\n",
    )?;
    wd.write_meta(&meta, arch, &lock)?;
    let mut b = wd.read_builds()?;
    b.insert(id, arch)?;
    wd.write_builds(&b, &lock)?;
    wd.set_latest(Some(id), &lock)?;
    Ok(meta)
}

/// Every regular file of `a` is in `b` with the same bytes, and vice versa.
pub fn assert_same_tree(a: &Utf8Path, b: &Utf8Path) -> Result<()> {
    let list = |d: &Utf8Path| -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(d)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        Ok(v)
    };
    let (la, lb) = (list(a)?, list(b)?);
    assert_eq!(la, lb, "{a} and {b} hold different files");
    for f in la {
        assert!(
            std::fs::read(a.join(&f))? == std::fs::read(b.join(&f))?,
            "{f} differs between {a} and {b}"
        );
    }
    Ok(())
}
