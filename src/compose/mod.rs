//! `cosa-compose`: a treefile and RPM-MD repositories become an OSTree commit, as a new
//! build in the work directory, and only when an input changed (coreos-assembler's
//! `cosa build`, rpm-ostree's `compose tree`).
//!
//! Steps: load the treefile and image config → fast-path change check (repomd.xml) →
//! depsolve → input hash check → install with dnf into a scratch root → add/remove
//! files, postprocess (isolated from host and network) → OSTree layout → commit into
//! `tmp/repo` → stage `builds/<version>/<arch>/` (ostree tar, commitmeta.json,
//! lockfile, meta.json) → under the work directory lock, move it into place, record it
//! in builds.json, move `latest`, prune.

mod commit;
mod dnf;
mod files;
pub mod inputs;
pub mod pkgs;
mod record;
mod repos;
mod rpmostree;
mod tree;

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use clap::Parser;
use serde_json::{Map, Value, json};

use crate::ci::{self, Ci};
use crate::cli::{GlobalArgs, Outcome};
use crate::names::{host_arch, validate_build_id};
use crate::treefile::{self, BootLocation, Edition, Treefile};
use crate::workdir::Workdir;
use pkgs::Package;

/// Compose an OSTree commit from a treefile, as a new build.
#[derive(Parser, Debug)]
#[command(name = "cosa-compose", about, long_about = None, disable_version_flag = true)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The treefile (default: src/config/manifest.yaml in the work directory).
    #[arg(long, value_name = "FILE")]
    pub treefile: Option<Utf8PathBuf>,
    /// Build even if no input changed.
    #[arg(long, short)]
    pub force: bool,
    /// Resolve and print the package set; build nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the flattened treefile (includes and variables resolved) and exit.
    #[arg(long)]
    pub print_only: bool,
    /// The version (= build ID), instead of one from automatic-version-prefix.
    #[arg(long)]
    pub version: Option<String>,
    /// After composing, keep only the newest N builds (0 keeps all).
    #[arg(long, default_value_t = crate::prune::DEFAULT_KEEP_LAST_N, value_name = "N")]
    pub keep_last_n: usize,
    /// Do not prune old builds.
    #[arg(long)]
    pub no_prune: bool,
    /// How to compose: `dnf` (dnf + ostree, any Linux), `rpm-ostree` (where it is
    /// installed), or `auto`: rpm-ostree when it is on PATH, else dnf.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
}

/// The compose backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Auto,
    Dnf,
    RpmOstree,
}

/// What a compose did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Composed {
    /// A new build.
    Built { id: String, commit: String },
    /// No input changed since this build (or there was none and nothing to do).
    Unchanged { id: String },
    /// `--dry-run`: the resolved package set.
    DryRun(Vec<String>),
}

/// The OSTree ref for the treefile's `ref` must be a valid ostree ref.
fn check_ref(r: &str) -> Result<()> {
    let ok = !r.is_empty()
        && r.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                && !seg.starts_with(['.', '-'])
        });
    if !ok {
        bail!("treefile ref {r:?} is not a valid OSTree ref");
    }
    Ok(())
}

/// The OS name: `metadata.name` of the treefile, else the first component of its ref.
fn os_name(tf: &Treefile) -> String {
    match tf.metadata.get("name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => tf.ostree_ref.split('/').next().unwrap_or("os").to_string(),
    }
}

/// Git state of the config, as coreos-assembler records it (`config-gitrev`, `config-dirty`).
fn config_git(dir: &Utf8Path) -> Option<(String, bool)> {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir.as_str())
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "HEAD"])?;
    let dirty = !git(&["status", "--porcelain", "--", "."])?.is_empty();
    Some((rev, dirty))
}

/// Read the previous build's commitmeta.json (for the fast path and the package diff).
fn read_commitmeta(wd: &Workdir, id: &str, arch: &str) -> Result<Option<Map<String, Value>>> {
    let p = wd.build_arch_dir(id, arch)?.join("commitmeta.json");
    if !p.exists() {
        return Ok(None);
    }
    Ok(Some(crate::parse::read_json(&p)?))
}

/// The package list recorded in a commitmeta.json.
fn packages_of(cm: &Map<String, Value>) -> Vec<Package> {
    cm.get("rpmostree.rpmdb.pkglist")
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    let r = r.as_array()?;
                    Some(Package {
                        name: r.first()?.as_str()?.into(),
                        epoch: r.get(1)?.as_u64()?,
                        version: r.get(2)?.as_str()?.into(),
                        release: r.get(3)?.as_str()?.into(),
                        arch: r.get(4)?.as_str()?.into(),
                        repo: String::new(),
                        checksum: String::new(),
                        size: 0,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Package name -> version lock.
type Locks = BTreeMap<String, dnf::Lock>;

/// Version locks from `manifest-lock.<arch>.json` beside the treefile, and its bytes.
fn read_lockfile(dir: &Utf8Path, arch: &str) -> Result<(Locks, Option<Vec<u8>>)> {
    let p = dir.join(format!("manifest-lock.{arch}.json"));
    if !p.exists() {
        return Ok((BTreeMap::new(), None));
    }
    let bytes = crate::parse::read_limited(&p, crate::parse::MAX_JSON_BYTES)?;
    #[derive(serde::Deserialize)]
    struct Entry {
        evra: Option<String>,
        evr: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct LockFile {
        #[serde(default)]
        packages: BTreeMap<String, Entry>,
    }
    let lf: LockFile = crate::parse::json_from_slice(&bytes, p.as_str())?;
    let mut out = BTreeMap::new();
    for (name, e) in lf.packages {
        let lock = match (e.evra, e.evr) {
            (Some(evra), _) => match evra.rsplit_once('.') {
                Some((evr, arch)) => dnf::Lock {
                    evr: evr.to_string(),
                    arch: Some(arch.to_string()),
                },
                None => bail!("{p}: {name}: evra {evra:?} has no arch"),
            },
            (None, Some(evr)) => dnf::Lock { evr, arch: None },
            (None, None) => bail!("{p}: {name}: needs evra or evr"),
        };
        out.insert(name, lock);
    }
    Ok((out, Some(bytes)))
}

/// What every compose starts from: the work directory lock (held throughout, so two
/// composes in one work directory run one after the other), builds.json, and the
/// previous build for this arch.
struct Start {
    lock: crate::workdir::WorkdirLock,
    builds: crate::builds::BuildsJson,
    prev: Option<crate::meta::Meta>,
}

fn start(wd: &Workdir, arch: &str) -> Result<Start> {
    let lock = wd.lock()?;
    crate::scratch::remove_stale_tmp(&wd.builds_dir())?;
    crate::scratch::remove_stale_tmp(&wd.tmp_dir())?;
    let builds = wd.read_builds()?;
    let prev = builds
        .builds
        .iter()
        .find(|b| b.arches.iter().any(|a| a == arch))
        .map(|b| wd.read_meta(&b.id, arch))
        .transpose()?;
    Ok(Start { lock, builds, prev })
}

/// A scratch directory in the work directory's tmp/ (not /tmp, which may be small).
fn scratch_dir(wd: &Workdir) -> Result<(tempfile::TempDir, Utf8PathBuf)> {
    let td = tempfile::Builder::new()
        .prefix(&format!("{}compose.", crate::fsutil::TMP_PREFIX))
        .tempdir_in(wd.tmp_dir())
        .with_context(|| format!("creating a scratch directory in {}", wd.tmp_dir()))?;
    let p = Utf8PathBuf::from_path_buf(td.path().to_path_buf())
        .map_err(|p| anyhow::anyhow!("non-UTF-8 path {}", p.display()))?;
    Ok((td, p))
}

/// The flattened image.yaml beside the treefile, as JSON, if there is one.
fn image_json(tf_dir: &Utf8Path) -> Result<Option<Vec<u8>>> {
    let image_yaml = tf_dir.join("image.yaml");
    if !image_yaml.exists() {
        return Ok(None);
    }
    Ok(Some(serde_json::to_vec(&crate::image::config::load(
        &image_yaml,
    )?)?))
}

/// The new build's version: `--version`, else the next after the previous build's.
fn next_version(
    args: &Args,
    tf_path: &Utf8Path,
    prefix: Option<&str>,
    suffix: Option<&str>,
    prev: Option<&crate::meta::Meta>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<String> {
    let v = match &args.version {
        Some(v) => v.clone(),
        None => {
            let Some(prefix) = prefix else {
                bail!("{tf_path}: no automatic-version-prefix; add one or pass --version");
            };
            crate::version::next_version(
                prefix,
                suffix,
                prev.map(|m| m.ostree_version.as_str()),
                now,
            )?
        }
    };
    validate_build_id(&v)?;
    Ok(v)
}

/// Compose; the work directory lock is held throughout, so two composes in one work
/// directory run one after the other.
pub fn compose(wd: &Workdir, args: &Args) -> Result<Composed> {
    let ci = Ci::detect();
    let arch = host_arch();
    let config = wd.config_dir();
    let tf_path = args
        .treefile
        .clone()
        .unwrap_or_else(|| config.join("manifest.yaml"));
    let rpm_ostree = match args.backend {
        Backend::RpmOstree => true,
        Backend::Dnf => false,
        Backend::Auto => crate::cmd::have("rpm-ostree"),
    };
    if rpm_ostree {
        if !crate::cmd::have("rpm-ostree") {
            bail!("--backend rpm-ostree: rpm-ostree is not installed (or not on PATH)");
        }
        return rpmostree::compose(wd, args, &tf_path);
    }
    let tf = treefile::load(&tf_path, arch)?;
    check_ref(&tf.ostree_ref)?;
    if args.print_only {
        println!("{}", tf.to_json_pretty());
        return Ok(Composed::DryRun(Vec::new()));
    }
    let tf_dir = tf_path
        .parent()
        .map(Utf8Path::to_owned)
        .unwrap_or_else(|| config.clone());
    let image_json = image_json(&tf_dir)?;
    let (locks, lock_bytes) = read_lockfile(&tf_dir, arch)?;
    let releasever = tf
        .releasever
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let repos = repos::select(repos::load_dir(&tf_dir)?, tf.repos.as_deref(), &tf_dir)?;

    let Start {
        lock,
        builds,
        prev: prev_meta,
    } = start(wd, arch)?;
    let prev_id = prev_meta.as_ref().map(|m| m.buildid.clone());
    let prev_cm = match &prev_id {
        Some(id) => read_commitmeta(wd, id, arch)?,
        None => None,
    };

    // Fast path: config + repomd.xml checksums equal the previous build's.
    let config_sum = inputs::config_checksum(
        &tf.checksum()?,
        image_json.as_deref(),
        lock_bytes.as_deref(),
    );
    ci::group_start(ci, "cosa-fetch-metadata", "Checking repository metadata");
    let repomd = repos::repomd_state(&repos, &releasever, arch)?;
    ci::group_end(ci, "cosa-fetch-metadata");
    let state = repomd.as_ref().map(|r| inputs::fast_state(&config_sum, r));
    if let (false, false, Some(s), Some(cm), Some(id)) =
        (args.force, args.dry_run, &state, &prev_cm, &prev_id)
        && cm.get(inputs::STATE_KEY).and_then(Value::as_str) == Some(s.as_str())
    {
        return Ok(Composed::Unchanged { id: id.clone() });
    }

    let (scratch_td, scratch) = scratch_dir(wd)?;
    let reposdir = scratch.join("repos.d");
    repos::write_reposdir(&reposdir, &repos)?;
    let root = scratch.join("root");
    let cachedir = wd.cache_dir().join("dnf");
    let logdir = scratch.join("log");
    let packages = tf.packages();
    let repo_packages: Vec<Value> = tf
        .repo_packages
        .iter()
        .map(|rp| json!({"repo": rp.repo, "packages": rp.packages}))
        .collect();
    let mut req = dnf::Request {
        mode: "resolve",
        installroot: root.as_str(),
        reposdir: reposdir.as_str(),
        cachedir: cachedir.as_str(),
        logdir: logdir.as_str(),
        releasever: &releasever,
        basearch: arch,
        packages: &packages,
        exclude: &tf.exclude_packages,
        repo_packages,
        recommends: tf.recommends_enabled(),
        documentation: tf.documentation_enabled(),
        locked: locks,
        dbpath: dnf::RPMDB,
    };
    // A separate depsolve is needed only to decide (or for --dry-run): with --force, or
    // with no previous input hash, the install's own resolution is the package set.
    let prev_hash = prev_meta.as_ref().and_then(|m| m.inputhash.clone());
    let decide = !args.force && prev_hash.is_some();
    if decide || args.dry_run {
        ci::group_start(ci, "cosa-resolve", "Resolving packages");
        let resolved = dnf::run(&req, &scratch)?;
        ci::group_end(ci, "cosa-resolve");
        if args.dry_run {
            return Ok(Composed::DryRun(
                resolved
                    .iter()
                    .map(|p| format!("{} ({})", p.nevra(), p.repo))
                    .collect(),
            ));
        }
        if let (true, Some(pm)) = (decide, &prev_meta)
            && prev_hash.as_deref() == Some(inputs::inputhash(&config_sum, &resolved).as_str())
        {
            return Ok(Composed::Unchanged {
                id: pm.buildid.clone(),
            });
        }
    }

    let now = chrono::Utc::now();
    let version = next_version(
        args,
        &tf_path,
        tf.automatic_version_prefix.as_deref(),
        tf.automatic_version_suffix.as_deref(),
        prev_meta.as_ref(),
        now,
    )?;
    if builds.has(&version, arch) {
        tracing::info!("build {version} already exists for {arch}");
        return Ok(Composed::Unchanged { id: version });
    }

    ci::group_start(ci, "cosa-install", "Installing packages");
    req.mode = "install";
    let installed = dnf::run(&req, &scratch)?;
    ci::group_end(ci, "cosa-install");
    let inputhash = inputs::inputhash(&config_sum, &installed);

    ci::group_start(ci, "cosa-postprocess", "Postprocessing the tree");
    files::apply(&root, &tf)?;
    let name = os_name(&tf);
    files::write_into_tree(
        &root,
        "usr/share/rpm-ostree/treefile.json",
        tf.to_json_pretty().as_bytes(),
    )?;
    if let Some(ij) = &image_json {
        files::write_into_tree(&root, "usr/share/coreos-assembler/image.json", ij)?;
    }
    let opts = tree::TreeOptions {
        boot_location_new: tf.boot_location_or_default() == BootLocation::New,
        tmp_is_dir: tf.edition_or_default() == Edition::E2024,
        machineid_compat: tf.machineid_compat_enabled(),
        units: &tf.units,
        default_target: tf.default_target.as_deref(),
        mutate_os_release: tf.mutate_os_release.as_deref(),
        version: &version,
        initramfs_args: &tf.initramfs_args,
    };
    let kver = tree::ostreeify(&root, &opts)?;
    ci::group_end(ci, "cosa-postprocess");

    // Commit metadata: what rpm-ostree records, plus our fast-path state.
    let timestamp = now.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut md = Map::new();
    for (k, v) in &tf.add_commit_metadata {
        md.insert(k.clone(), v.clone());
    }
    md.insert("version".into(), json!(version));
    md.insert("rpmostree.inputhash".into(), json!(inputhash));
    md.insert("ostree.bootable".into(), json!(true));
    md.insert("ostree.linux".into(), json!(kver));
    md.insert(
        "rpmostree.rpmdb.pkglist".into(),
        Value::Array(
            installed
                .iter()
                .map(|p| json!([p.name, p.epoch, p.version, p.release, p.arch]))
                .collect(),
        ),
    );
    if let Some(s) = &state {
        md.insert(inputs::STATE_KEY.into(), json!(s));
    }
    let git = config_git(&tf_dir);
    if let Some((rev, _)) = &git {
        md.insert("coreos-assembler.config-gitrev".into(), json!(rev));
    }
    ci::group_start(ci, "cosa-commit", "Committing");
    let repo = wd.repo_dir();
    commit::ensure_repo(&repo)?;
    let selinux = tf.selinux_enabled() && root.join("usr/etc/selinux/config").exists();
    let checksum = commit::commit(&commit::Commit {
        repo: &repo,
        tree: &root,
        branch: &tf.ostree_ref,
        subject: format!("{name} {version}"),
        timestamp: &timestamp,
        metadata: &md,
        selinux,
    })?;
    commit::set_ref(&repo, &crate::prune::build_ref(&version, arch), &checksum)?;
    let content = commit::content_checksum(&repo, &checksum)?;
    ci::group_end(ci, "cosa-commit");

    let summary = tf
        .metadata
        .get("summary")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let pkgdiff = prev_cm
        .as_ref()
        .map(|cm| pkgs::pkgdiff(&packages_of(cm), &installed));
    record::record(
        wd,
        &lock,
        &scratch,
        record::NewBuild {
            name,
            version: version.clone(),
            arch,
            ostree_ref: tf.ostree_ref.clone(),
            commit: checksum.clone(),
            content_checksum: content,
            timestamp,
            inputhash,
            commitmeta: md,
            lockfile: generated_lockfile(
                &installed,
                &repos,
                &now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            ),
            pkgdiff,
            summary,
            git,
            image_json: image_json.clone(),
        },
    )?;
    drop(scratch_td);
    if !args.no_prune && args.keep_last_n > 0 {
        crate::prune::prune(wd, &lock, args.keep_last_n)?;
    }
    Ok(Composed::Built {
        id: version,
        commit: checksum,
    })
}

/// rpm-ostree's lockfile format: every package's EVRA and digest.
fn generated_lockfile(pkgs: &[Package], repos: &[repos::Repo], ts: &str) -> Value {
    let mut packages = Map::new();
    for p in pkgs {
        packages.insert(
            p.name.clone(),
            json!({"evra": format!("{}.{}", p.evr(), p.arch), "digest": p.checksum}),
        );
    }
    let rpmmd: Map<String, Value> = repos
        .iter()
        .map(|r| (r.id.clone(), json!({"generated": ts})))
        .collect();
    json!({"metadata": {"generated": ts, "rpmmd_repos": rpmmd}, "packages": packages})
}

impl crate::cli::Command for Args {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }

    fn run(self) -> Result<Outcome> {
        let wd = self.global.open_workdir()?;
        let started = std::time::Instant::now();
        match compose(&wd, &self)? {
            Composed::Built { id, commit } => {
                ci::step_summary(
                    &format!("cosa-compose: built {id}"),
                    &wd.read_meta(&id, host_arch())?,
                )?;
                eprintln!(
                    "Built {id} (commit {commit}) in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                println!("changed=true\nbuild={id}");
                ci::github_output(&[("changed", "true".into()), ("build", id)])?;
            }
            Composed::Unchanged { id } => {
                eprintln!("No changes since build {id}");
                println!("changed=false\nbuild={id}");
                ci::github_output(&[("changed", "false".into()), ("build", id)])?;
            }
            Composed::DryRun(pkgs) => {
                for p in pkgs {
                    println!("{p}");
                }
            }
        }
        Ok(Outcome::Success)
    }
}
