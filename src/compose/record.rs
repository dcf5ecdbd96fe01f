//! Recording a committed tree as a build: stage `builds/<id>/<arch>/` next to its final
//! place (the ostree tar, commitmeta.json, the generated lockfile, image.json,
//! meta.json), then, under the work directory lock, move it in whole, add it to
//! builds.json and move `latest`. A reader never sees a build with files missing.

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Map, Value, json};

use super::commit;
use crate::builds::rfc3339_now;
use crate::ci::{self, Ci};
use crate::meta::{Artifact, Meta};
use crate::names::artifact_name;
use crate::workdir::{Workdir, WorkdirLock};

/// Everything known about a new build once its commit exists.
pub struct NewBuild<'a> {
    pub name: String,
    pub version: String,
    pub arch: &'a str,
    pub ostree_ref: String,
    pub commit: String,
    pub content_checksum: Option<String>,
    /// RFC3339 commit timestamp.
    pub timestamp: String,
    pub inputhash: String,
    pub commitmeta: Map<String, Value>,
    pub lockfile: Value,
    pub pkgdiff: Option<Vec<Value>>,
    pub summary: Option<String>,
    /// Config git revision and dirty flag.
    pub git: Option<(String, bool)>,
    /// The flattened image config, also kept beside meta.json.
    pub image_json: Option<Vec<u8>>,
}

pub fn record(wd: &Workdir, lock: &WorkdirLock, scratch: &Utf8Path, b: NewBuild<'_>) -> Result<()> {
    let arch = b.arch;
    let stage_td = tempfile::Builder::new()
        .prefix(&format!("{}build.", crate::fsutil::TMP_PREFIX))
        .tempdir_in(wd.builds_dir())
        .with_context(|| format!("creating a staging directory in {}", wd.builds_dir()))?;
    let stage = Utf8PathBuf::from_path_buf(stage_td.path().to_path_buf())
        .map_err(|p| anyhow::anyhow!("non-UTF-8 path {}", p.display()))?;
    let tar_name = artifact_name(&b.name, &b.version, "ostree", arch, "tar");
    let ci = Ci::detect();
    ci::group_start(ci, "cosa-export", "Exporting the OSTree commit");
    commit::export_tar(
        &wd.repo_dir(),
        &b.ostree_ref,
        &b.commit,
        scratch,
        &stage.join(&tar_name),
    )?;
    ci::group_end(ci, "cosa-export");
    let (sha, size) = crate::fsutil::sha256_file(&stage.join(&tar_name))?;
    crate::fsutil::write_json(&stage.join("commitmeta.json"), &b.commitmeta)?;
    crate::fsutil::write_json(
        &stage.join(format!("manifest-lock.generated.{arch}.json")),
        &b.lockfile,
    )?;
    if let Some(ij) = &b.image_json {
        crate::fsutil::atomic_write(&stage.join("image.json"), ij)?;
    }
    let mut extra = Map::new();
    if let Some(s) = b.summary {
        extra.insert("summary".into(), json!(s));
    }
    if let Some((rev, dirty)) = &b.git {
        extra.insert("coreos-assembler.config-gitrev".into(), json!(rev));
        extra.insert(
            "coreos-assembler.config-dirty".into(),
            json!(dirty.to_string()),
        );
    }
    // The package diff against the previous build. (coreos-assembler's FCOS pipeline also
    // wrote `fedora-coreos.parent-version`; its schema wants FCOS-style versions of at
    // least 12 characters, so it is not written for other OSes' versions.)
    if let Some(d) = b.pkgdiff {
        extra.insert("pkgdiff".into(), Value::Array(d));
    }
    let mut images = indexmap::IndexMap::new();
    images.insert(
        "ostree".to_string(),
        Artifact {
            path: tar_name,
            sha256: sha,
            size: Some(size),
            uncompressed_sha256: None,
            uncompressed_size: None,
            skip_compression: None,
            extra: Map::new(),
        },
    );
    let meta = Meta {
        buildid: b.version.clone(),
        name: b.name,
        ostree_commit: b.commit,
        ostree_version: b.version.clone(),
        ostree_timestamp: b.timestamp,
        ostree_ref: Some(b.ostree_ref),
        ostree_content_checksum: b.content_checksum,
        inputhash: Some(b.inputhash),
        basearch: Some(arch.to_string()),
        build_timestamp: Some(rfc3339_now()),
        images,
        extra,
    };
    crate::fsutil::write_json(&stage.join("meta.json"), &meta)?;
    publish(wd, lock, stage_td, &b.version, arch)
}

/// Move a complete staged build into `builds/<id>/<arch>`, record it, move latest.
fn publish(
    wd: &Workdir,
    lock: &WorkdirLock,
    stage: tempfile::TempDir,
    id: &str,
    arch: &str,
) -> Result<()> {
    let mut builds = wd.read_builds()?;
    let dest = wd.build_arch_dir(id, arch)?;
    if dest.exists() {
        if builds.has(id, arch) {
            bail!("build {id} already exists for {arch}");
        }
        // Left by a compose that died between the move and builds.json: not a build.
        tracing::warn!("removing {dest}: not recorded in builds.json (an interrupted compose)");
        std::fs::remove_dir_all(&dest).with_context(|| format!("removing {dest}"))?;
    }
    let parent = wd.build_dir(id)?;
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {parent}"))?;
    let staged = stage.keep();
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .with_context(|| format!("setting permissions of {}", staged.display()))?;
    std::fs::rename(&staged, &dest)
        .with_context(|| format!("moving the staged build to {dest}"))?;
    crate::fsutil::fsync_dir(&parent)?;
    builds.insert(id, arch)?;
    wd.write_builds(&builds, lock)?;
    wd.set_latest(Some(id), lock)
}
