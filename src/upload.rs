//! `cosa-upload`: publish a build directory to a store, safely for parallel jobs.
//!
//! Order (so that no reader ever sees a build whose files are missing): the
//! artifacts (`images.*` of meta.json), then the other files of the arch directory
//! (commitmeta.json, manifest-lock...), then meta.json, then files beside the arch
//! directories (release.json...), then the store's builds.json, changed by a
//! read-modify-write that keeps concurrent writers' entries ([`crate::store::index`]).
//! A reader that finds a build in builds.json finds its meta.json, and every file
//! meta.json names.
//!
//! An artifact already in the store with the same size and the sha256 recorded
//! with it (S3 user metadata `sha256`, set by cosa-upload) is not sent again, so an
//! interrupted upload resumes where it stopped. Objects without that metadata (e.g.
//! uploaded by coreos-assembler) are sent again.
//!
//! `cosa-upload prune --keep-last-n N` removes older builds from the store: each
//! leaves builds.json (recorded in `tombstone-builds`) before its objects are deleted.

use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use camino::{Utf8Path, Utf8PathBuf};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};

use crate::ci;
use crate::cli::{Command, GlobalArgs, Outcome};
use crate::fsutil::TMP_PREFIX;
use crate::meta::Meta;
use crate::names::{validate_arch, validate_build_id, validate_file_name};
use crate::store::index::{self, Change};
use crate::store::{
    Client, Precondition, PutMeta, PutResult, StoreArgs, block_on, key, read_json_doc,
};
use crate::workdir::Workdir;

/// Upload a build to a store (S3, file), or prune the store.
#[derive(Parser, Debug)]
#[command(
    name = "cosa-upload",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(flatten)]
    pub upload: UploadArgs,
    #[command(subcommand)]
    pub command: Option<Sub>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct UploadArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The build to upload (default: builds/latest).
    #[arg(long, value_name = "ID|latest", default_value = "latest")]
    pub build: String,
    /// Only these architectures (repeatable; default: every arch of the build).
    #[arg(long, value_name = "ARCH")]
    pub arch: Vec<String>,
    /// Only these artifacts, by meta.json `images` key (repeatable; default: all).
    /// meta.json in the store then lists only artifacts the store has.
    #[arg(long, value_name = "NAME")]
    pub artifact: Vec<String>,
    /// S3 canned ACL for every object (private, public-read, ...; default: the bucket's).
    #[arg(long, value_name = "ACL")]
    pub acl: Option<String>,
    /// Say what would be sent, send nothing (the store is only read).
    #[arg(long)]
    pub dry_run: bool,
    /// Do not add the build to the store's builds.json.
    #[arg(long)]
    pub skip_builds_json: bool,
    /// Send artifacts even when the store has them with the same sha256.
    #[arg(long)]
    pub force: bool,
    /// Send nothing but add the build (--build ID, --arch) to the store's builds.json:
    /// the last step after parallel jobs uploaded it with --skip-builds-json. Its
    /// meta.json must be in the store; no local build directory is needed.
    #[arg(long, conflicts_with_all = ["skip_builds_json", "artifact", "force"])]
    pub builds_json_only: bool,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Sub {
    /// Remove all but the newest N builds from the store (tagged builds are kept).
    Prune(PruneArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct PruneArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// How many builds to keep.
    #[arg(long, value_name = "N")]
    pub keep_last_n: usize,
    /// Say what would be removed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Command for Args {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }

    fn run(self) -> Result<Outcome> {
        match self.command {
            Some(Sub::Prune(p)) => block_on(prune(&p)),
            None if self.upload.builds_json_only => block_on(add_to_index(&self.upload)),
            None => {
                let wd = self.global.open_workdir()?;
                block_on(upload(&wd, &self.upload))
            }
        }?;
        Ok(Outcome::Success)
    }
}

/// One file to send.
#[derive(Debug, Clone)]
struct Job {
    key: String,
    path: Utf8PathBuf,
    size: u64,
    meta: PutMeta,
    /// An artifact: skipped when the store has it with the same sha256.
    artifact: bool,
}

/// What one arch directory sends.
struct ArchPlan {
    arch: String,
    artifacts: Vec<Job>,
    others: Vec<Job>,
    meta: Meta,
    meta_bytes: Vec<u8>,
    /// `images` keys not sent this time (with --artifact).
    not_sent: Vec<String>,
}

#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    skipped: usize,
    bytes: u64,
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn regular_files(dir: &Utf8Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for ent in std::fs::read_dir(dir).with_context(|| format!("listing {dir}"))? {
        let ent = ent.with_context(|| format!("listing {dir}"))?;
        let name = ent
            .file_name()
            .into_string()
            .map_err(|n| anyhow::anyhow!("{dir}: non-UTF-8 file name {n:?}"))?;
        // Hidden files, temporary files and locks are not part of a build.
        if name.starts_with('.') || name.starts_with(TMP_PREFIX) {
            continue;
        }
        let md = ent
            .metadata()
            .with_context(|| format!("reading {dir}/{name}"))?;
        if md.is_file() {
            validate_file_name(&name).map_err(|e| anyhow::anyhow!("{dir}: {e}"))?;
            out.push((name, md.len()));
        }
    }
    out.sort();
    Ok(out)
}

fn plan_arch(wd: &Workdir, id: &str, arch: &str, args: &UploadArgs) -> Result<ArchPlan> {
    let dir = wd.build_arch_dir(id, arch)?;
    let meta_path = dir.join("meta.json");
    let meta_bytes = crate::parse::read_limited(&meta_path, crate::parse::MAX_JSON_BYTES)?;
    let meta = Meta::parse(&meta_bytes, meta_path.as_str())?;
    if meta.buildid != id {
        bail!(
            "{meta_path}: buildid is {:?}, expected {id:?}",
            meta.buildid
        );
    }
    let acl = args.acl.as_deref();
    let mut artifacts = Vec::new();
    let mut not_sent = Vec::new();
    let image_paths: HashSet<&str> = meta.images.values().map(|a| a.path.as_str()).collect();
    for (name, art) in &meta.images {
        if !args.artifact.is_empty() && !args.artifact.contains(name) {
            not_sent.push(name.clone());
            continue;
        }
        let path = dir.join(&art.path);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("images.{name} of {meta_path}: {path}"))?
            .len();
        if let Some(s) = art.size
            && s != size
        {
            bail!(
                "{path}: {size} bytes, but {meta_path} says {s}: the build directory is inconsistent"
            );
        }
        artifacts.push(Job {
            key: key::arch_file(id, arch, &art.path)?,
            path,
            size,
            meta: PutMeta::artifact(&art.path, &art.sha256, acl),
            artifact: true,
        });
    }
    let mut others = Vec::new();
    for (name, size) in regular_files(&dir)? {
        if name == "meta.json" || image_paths.contains(name.as_str()) {
            continue;
        }
        others.push(Job {
            key: key::arch_file(id, arch, &name)?,
            path: dir.join(&name),
            size,
            meta: PutMeta::metadata(&name, acl),
            artifact: false,
        });
    }
    Ok(ArchPlan {
        arch: arch.to_string(),
        artifacts,
        others,
        meta,
        meta_bytes,
        not_sent,
    })
}

/// The meta.json to publish over `remote` (the store's, if any): the local one, with
/// artifacts not sent this time taken from `remote`'s entries when it describes the
/// same commit, and `remote`'s artifacts the local meta.json lacks kept (parallel jobs
/// each upload their own artifacts of one build; none drops another's). When `remote`
/// is another commit (a rebuild of the ID), the local one replaces it.
fn merged_meta(local: &Meta, not_sent: &[String], remote: Option<&Meta>) -> Meta {
    let mut m = local.clone();
    let Some(r) =
        remote.filter(|r| r.buildid == local.buildid && r.ostree_commit == local.ostree_commit)
    else {
        return m;
    };
    for name in not_sent {
        if let Some(art) = r.images.get(name) {
            m.images.insert(name.clone(), art.clone());
        }
    }
    for (name, art) in &r.images {
        if !m.images.contains_key(name) {
            m.images.insert(name.clone(), art.clone());
        }
    }
    m
}

/// Write an arch's meta.json: a read-modify-write of the store's (conditional where the
/// store honours it, retried when another writer came first); artifacts not sent and
/// not in the store are left out. Nothing is written when the store's is the same.
async fn publish_meta(client: &Client, id: &str, p: &ArchPlan, args: &UploadArgs) -> Result<()> {
    let k = key::arch_file(id, &p.arch, "meta.json")?;
    let conditional = !args.dry_run && client.conditional_writes().await?;
    for round in 0..index::MAX_ROUNDS {
        let cur = read_json_doc(client, &k).await?;
        let remote = match &cur {
            Some(f) => Some(Meta::parse(&f.bytes, &client.describe(&k))?),
            None => None,
        };
        let mut m = merged_meta(&p.meta, &p.not_sent, remote.as_ref());
        for name in &p.not_sent {
            if remote
                .as_ref()
                .is_some_and(|r| r.images.get(name) == m.images.get(name))
            {
                continue;
            }
            if let Some(art) = m.images.get(name) {
                let ak = key::arch_file(id, &p.arch, &art.path)?;
                if client.head(&ak).await?.is_none() {
                    tracing::info!("images.{name} is not in the store: left out of its meta.json");
                    m.images.shift_remove(name);
                }
            }
        }
        let bytes = if m == p.meta {
            p.meta_bytes.clone()
        } else {
            m.to_json_bytes()?
        };
        if cur
            .as_ref()
            .is_some_and(|f| f.bytes.as_ref() == bytes.as_slice())
        {
            tracing::info!("{} is up to date", client.describe(&k));
            return Ok(());
        }
        if args.dry_run {
            tracing::info!("would upload {}", client.describe(&k));
            return Ok(());
        }
        let pre = match (&cur, conditional) {
            (None, true) => Precondition::IfAbsent,
            (Some(f), true) => f
                .etag
                .clone()
                .map_or(Precondition::None, Precondition::IfMatch),
            (_, false) => Precondition::None,
        };
        tracing::info!("upload {}", client.describe(&k));
        let meta = PutMeta::metadata("meta.json", args.acl.as_deref());
        match client.put_bytes(&k, Bytes::from(bytes), &meta, pre).await? {
            PutResult::Done => return Ok(()),
            PutResult::PreconditionFailed => {
                tracing::debug!("{k} changed since it was read; retrying ({round})");
                tokio::time::sleep(crate::store::retry::backoff(round.min(3))).await;
            }
        }
    }
    bail!(
        "{}: gave up after {} rounds of concurrent writes",
        client.describe(&k),
        index::MAX_ROUNDS
    )
}

async fn send(
    client: &Client,
    job: &Job,
    args: &UploadArgs,
    tally: &std::sync::Mutex<Tally>,
) -> Result<()> {
    let what = client.describe(&job.key);
    if job.artifact && !args.force {
        let have = client.head(&job.key).await?;
        if let Some(h) = have
            && h.size == job.size
            && h.sha256.is_some()
            && h.sha256 == job.meta.sha256
        {
            tracing::info!("skip {what}: in the store with the same sha256");
            if let Ok(mut t) = tally.lock() {
                t.skipped += 1;
            }
            return Ok(());
        }
    }
    if args.dry_run {
        tracing::info!("would upload {} -> {what} ({})", job.path, human(job.size));
    } else {
        tracing::info!("upload {what} ({})", human(job.size));
        client
            .put_file(&job.key, &job.path, &job.meta)
            .await
            .with_context(|| format!("uploading {}", job.path))?;
    }
    if let Ok(mut t) = tally.lock() {
        t.sent += 1;
        t.bytes += job.size;
    }
    Ok(())
}

/// Send jobs, two files at a time (one with --jobs 1), each big one in parallel parts.
async fn send_all(
    client: &Client,
    jobs: &[Job],
    args: &UploadArgs,
    tally: &std::sync::Mutex<Tally>,
) -> Result<()> {
    futures::stream::iter(jobs)
        .map(|j| send(client, j, args, tally))
        .buffer_unordered(args.store.jobs.clamp(1, 2).into())
        .try_collect::<()>()
        .await
}

fn resolve_build(wd: &Workdir, build: &str) -> Result<String> {
    if build == "latest" {
        wd.latest_id()?
            .with_context(|| format!("{} has no latest build", wd.builds_dir()))
    } else {
        validate_build_id(build)?;
        Ok(build.to_string())
    }
}

/// `--builds-json-only`: record a build whose files parallel jobs already uploaded.
pub async fn add_to_index(args: &UploadArgs) -> Result<()> {
    let id = &args.build;
    if id == "latest" {
        bail!("--builds-json-only needs --build ID (there is no local build to resolve 'latest')");
    }
    validate_build_id(id)?;
    let store = args.store.open()?;
    if args.arch.is_empty() {
        bail!("--builds-json-only needs --arch (the arches of build {id} to record)");
    }
    let client = store.connect().await?;
    client.check_writable()?;
    client.check_access().await?;
    for a in &args.arch {
        validate_arch(a)?;
        let k = key::arch_file(id, a, "meta.json")?;
        if client.head(&k).await?.is_none() {
            bail!(
                "{}: not in the store: upload build {id} ({a}) first",
                client.describe(&k)
            );
        }
    }
    if args.dry_run {
        tracing::info!(
            "would add build {id} ({}) to {}",
            args.arch.join(", "),
            client.describe(crate::store::BUILDS_JSON)
        );
        return Ok(());
    }
    let pairs: Vec<_> = args.arch.iter().map(|a| (id.clone(), a.clone())).collect();
    index::update(&client, &Change::Add(pairs)).await?;
    tracing::info!("builds.json lists build {id} ({})", args.arch.join(", "));
    let pairs = [
        ("build", id.clone()),
        ("uploaded", "0".into()),
        ("skipped", "0".into()),
    ];
    for (k, v) in &pairs {
        println!("{k}={v}");
    }
    ci::github_output(&pairs)
}

pub async fn upload(wd: &Workdir, args: &UploadArgs) -> Result<()> {
    let store = args.store.open()?;
    let id = resolve_build(wd, &args.build)?;
    let local = wd.read_builds()?;
    let entry = local
        .get(&id)
        .with_context(|| format!("build {id} is not in {}", wd.builds_json_path()))?;
    let arches = if args.arch.is_empty() {
        entry.arches.clone()
    } else {
        for a in &args.arch {
            validate_arch(a)?;
            if !entry.arches.contains(a) {
                bail!("build {id} has no arch {a} in {}", wd.builds_json_path());
            }
        }
        args.arch.clone()
    };
    let mut plans = Vec::new();
    for a in &arches {
        plans.push(plan_arch(wd, &id, a, args)?);
    }
    for name in &args.artifact {
        if !plans.iter().any(|p| p.meta.images.contains_key(name)) {
            bail!("build {id} has no artifact {name:?} (meta.json images keys)");
        }
    }
    let client = store.connect().await?;
    client.check_writable()?;
    client.check_access().await?;
    let started = std::time::Instant::now();
    let tally = std::sync::Mutex::new(Tally::default());

    // 1. Artifacts, 2. other files of the arch directories.
    let artifacts: Vec<Job> = plans.iter().flat_map(|p| p.artifacts.clone()).collect();
    send_all(&client, &artifacts, args, &tally).await?;
    let others: Vec<Job> = plans.iter().flat_map(|p| p.others.clone()).collect();
    send_all(&client, &others, args, &tally).await?;

    // 3. meta.json, listing only artifacts the store has, and keeping those other
    // jobs of the same build published meanwhile.
    for p in &plans {
        publish_meta(&client, &id, p, args).await?;
    }

    // 4. Files beside the arch directories.
    let build_dir = wd.build_dir(&id)?;
    let mut extra = Vec::new();
    for (name, size) in regular_files(&build_dir)? {
        extra.push(Job {
            key: key::build_file(&id, &name)?,
            path: build_dir.join(&name),
            size,
            meta: PutMeta::metadata(&name, args.acl.as_deref()),
            artifact: false,
        });
    }
    send_all(&client, &extra, args, &tally).await?;

    // 5. builds.json.
    if args.skip_builds_json {
        tracing::info!("builds.json left alone (--skip-builds-json)");
    } else {
        let pairs: Vec<_> = arches.iter().map(|a| (id.clone(), a.clone())).collect();
        if args.dry_run {
            tracing::info!(
                "would add build {id} ({}) to {}",
                arches.join(", "),
                client.describe(crate::store::BUILDS_JSON)
            );
        } else {
            index::update(&client, &Change::Add(pairs)).await?;
            tracing::info!("builds.json lists build {id} ({})", arches.join(", "));
        }
    }

    let t = tally.into_inner().unwrap_or_default();
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "{} {} file(s), {} in {secs:.1} s ({}/s); {} artifact(s) already in the store",
        if args.dry_run { "would send" } else { "sent" },
        t.sent,
        human(t.bytes),
        human((t.bytes as f64 / secs.max(0.001)) as u64),
        t.skipped
    );
    let pairs = [
        ("build", id.clone()),
        ("uploaded", t.sent.to_string()),
        ("skipped", t.skipped.to_string()),
    ];
    for (k, v) in &pairs {
        println!("{k}={v}");
    }
    if !args.dry_run {
        ci::github_output(&pairs)?;
    }
    Ok(())
}

pub async fn prune(args: &PruneArgs) -> Result<()> {
    let store = args.store.open()?;
    let client = store.connect().await?;
    client.check_writable()?;
    client.check_access().await?;
    let Some((b, _)) = index::read(&client).await? else {
        tracing::info!("{}: no builds.json, nothing to prune", store.display());
        return Ok(());
    };
    let tagged: HashSet<String> = b.tags()?.into_iter().map(|t| t.target).collect();
    let doomed: Vec<String> = b
        .builds
        .iter()
        .skip(args.keep_last_n)
        .filter(|e| !tagged.contains(&e.id))
        .map(|e| e.id.clone())
        .collect();
    if doomed.is_empty() {
        tracing::info!(
            "nothing to prune: {} build(s), keeping {}",
            b.builds.len(),
            args.keep_last_n
        );
        println!("pruned=");
        return Ok(());
    }
    if args.dry_run {
        for id in &doomed {
            tracing::info!("would prune build {id}");
        }
        println!("pruned={}", doomed.join(","));
        return Ok(());
    }
    // The entries leave builds.json first: a reader never finds a build whose
    // objects are being deleted.
    let after = index::update(&client, &Change::Remove(doomed.clone())).await?;
    for id in &doomed {
        if after.get(id).is_some() {
            bail!("build {id} is still in builds.json after pruning it");
        }
        let objects: Vec<String> = client
            .list(&key::build_prefix(id)?)
            .await?
            .into_iter()
            .map(|l| l.key)
            .collect();
        tracing::info!("prune build {id}: {} object(s)", objects.len());
        client.delete(&objects).await?;
    }
    println!("pruned={}", doomed.join(","));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        super::Args::command().debug_assert();
    }

    fn meta(commit: char, images: &[&str]) -> anyhow::Result<crate::meta::Meta> {
        let mut m: crate::meta::Meta = serde_json::from_value(serde_json::json!({
            "buildid": "1.0", "name": "example-os", "ostree-commit": commit.to_string().repeat(64),
            "ostree-version": "1.0", "ostree-timestamp": "2026-11-26T10:00:00Z",
        }))?;
        for (i, k) in images.iter().enumerate() {
            m.images.insert(
                k.to_string(),
                serde_json::from_value(serde_json::json!({
                    "path": format!("{k}-{commit}"), "sha256": format!("{i:064}"),
                }))?,
            );
        }
        Ok(m)
    }

    /// Parallel jobs of one build each add their artifact; none drops another's.
    #[test]
    fn meta_json_keeps_other_jobs_artifacts() -> anyhow::Result<()> {
        let remote = meta('a', &["ostree", "qemu"])?;
        // This job fetched ostree only, made aws (and a qemu of its own, not sent).
        let local = meta('a', &["ostree", "aws", "qemu"])?;
        let not_sent = vec!["ostree".to_string(), "qemu".to_string()];
        let m = super::merged_meta(&local, &not_sent, Some(&remote));
        let keys: Vec<_> = m.images.keys().cloned().collect();
        assert_eq!(keys, ["ostree", "aws", "qemu"]);
        // Not sent: the store's entry wins.
        assert_eq!(m.images["qemu"], remote.images["qemu"]);
        assert_eq!(m.images["aws"], local.images["aws"]);
        // The store's artifacts the local meta.json lacks are kept.
        let m = super::merged_meta(&meta('a', &["gcp"])?, &[], Some(&remote));
        let keys: Vec<_> = m.images.keys().cloned().collect();
        assert_eq!(keys, ["gcp", "ostree", "qemu"]);
        // Another commit under the same ID (a rebuild): the local one replaces it.
        let m = super::merged_meta(&meta('b', &["gcp"])?, &[], Some(&remote));
        assert_eq!(m, meta('b', &["gcp"])?);
        Ok(())
    }
}
