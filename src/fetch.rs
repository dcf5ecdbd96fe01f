//! `cosa-fetch`: bring a build directory from a store into the work directory.
//!
//! By default: the store's builds.json and, for the chosen build (the newest, or
//! `--build`) and arch (this machine's, or `--arch A|all`), meta.json,
//! commitmeta.json and manifest-lock.generated.<arch>.json (and `--file` extras). Artifacts on request (`--artifact NAME|all`), several at once,
//! each verified by sha256 while it streams and renamed into place only when it
//! matches (see [`crate::store::transfer`]); a rerun skips verified files and
//! continues partial ones.
//!
//! Everything read from the store is hostile input: builds.json and meta.json are
//! validated (IDs, arches and artifact paths are plain names) before any path is
//! made from them, sizes are bounded, and nothing is written outside
//! `builds/<id>/<arch>/` and `builds/builds.json`/`latest`.
//!
//! The local builds.json is replaced by the store's, as coreos-assembler's buildfetch
//! does, but only when the store has every local build (else `--force`), so a local
//! build not uploaded yet is never dropped silently. `latest` moves when the fetched
//! build is the store's newest.

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};

use crate::builds::BuildsJson;
use crate::ci;
use crate::cli::{Command, GlobalArgs, Outcome};
use crate::fsutil;
use crate::meta::Meta;
use crate::names::{host_arch, validate_arch};
use crate::store::transfer::{Expected, Fetch, Transfer, download_verified};
use crate::store::{BUILDS_JSON, StoreArgs, block_on, key, read_json_doc};
use crate::workdir::Workdir;

/// Fetch builds.json and a build's metadata (and artifacts) from a store.
#[derive(Parser, Debug)]
#[command(name = "cosa-fetch", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The build (default: the store's newest).
    #[arg(long, value_name = "ID")]
    pub build: Option<String>,
    /// Architectures to fetch (repeatable), or `all` (default: this machine's).
    #[arg(long, value_name = "ARCH|all")]
    pub arch: Vec<String>,
    /// Artifacts to fetch, by meta.json `images` key (repeatable), or `all` (default: none).
    #[arg(long, value_name = "NAME|all")]
    pub artifact: Vec<String>,
    /// Also fetch this file of the arch directory (repeatable; e.g. ostree-commit-object).
    #[arg(long, value_name = "NAME", value_parser = parse_file_name)]
    pub file: Vec<String>,
    /// Without --build: the newest build that has every requested arch.
    #[arg(long)]
    pub find_build_for_arch: bool,
    /// Decompress fetched .xz/.gz/.zst artifacts (and point meta.json at them).
    #[arg(long)]
    pub decompress: bool,
    /// Replace the local builds.json even when it has builds the store lacks.
    #[arg(long)]
    pub force: bool,
    /// fsync each artifact before it takes its final name (a build directory that
    /// must survive a power cut; by default files are verified by sha256 on use).
    #[arg(long)]
    pub sync: bool,
    /// Write artifacts through the page cache instead of straight to the disk (direct
    /// I/O, the default where the file system takes it): better when the disk is much
    /// slower than the network and the next step reads the files at once.
    #[arg(long)]
    pub buffered: bool,
}

impl Command for Args {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }

    fn run(self) -> Result<Outcome> {
        let wd = self.global.open_workdir()?;
        block_on(fetch(&wd, &self))?;
        Ok(Outcome::Success)
    }
}

fn parse_file_name(s: &str) -> Result<String, String> {
    crate::names::validate_file_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// One artifact to download.
struct Download {
    key: String,
    dest: Utf8PathBuf,
    expected: Expected,
}

/// Local builds (id, arch) the store's index lacks.
fn local_only(local: &BuildsJson, remote: &BuildsJson) -> Vec<String> {
    local
        .builds
        .iter()
        .flat_map(|b| b.arches.iter().map(move |a| (b, a)))
        .filter(|(b, a)| !remote.has(&b.id, a))
        .map(|(b, a)| format!("{}/{a}", b.id))
        .collect()
}

pub async fn fetch(wd: &Workdir, args: &Args) -> Result<()> {
    let store = args.store.open()?;
    let client = store.connect().await?;
    client.check_access().await?;
    let remote = read_json_doc(&client, BUILDS_JSON).await?;
    let remote_doc = match &remote {
        Some(r) => BuildsJson::parse(&r.bytes, &client.describe(BUILDS_JSON))?,
        None if args.build.is_some() => BuildsJson::default(),
        None => {
            tracing::info!("{} has no builds.json: nothing to fetch", store.display());
            return Ok(());
        }
    };

    let local = wd.read_builds()?;
    let extra = local_only(&local, &remote_doc);
    if !extra.is_empty() && !args.force {
        bail!(
            "{} has builds the store lacks ({}): upload them first, or use --force to replace it",
            wd.builds_json_path(),
            extra.join(", ")
        );
    }

    let all_arches = args.arch.iter().any(|a| a == "all");
    let wanted: Vec<String> = if all_arches {
        Vec::new()
    } else if args.arch.is_empty() {
        vec![host_arch().to_string()]
    } else {
        args.arch.clone()
    };
    for a in &wanted {
        validate_arch(a)?;
    }
    // A build uploaded with --skip-builds-json (parallel CI jobs add it to builds.json
    // at the end) is fetched by its ID and arches from its meta.json alone.
    let unlisted = match &args.build {
        Some(id) if remote_doc.get(id).is_none() => {
            if all_arches {
                bail!(
                    "build {id} is not in {}: name its arches (--arch) instead of all",
                    client.describe(BUILDS_JSON)
                );
            }
            let mut e = BuildsJson::default();
            for a in &wanted {
                e.insert(id, a)?;
            }
            Some(e)
        }
        _ => None,
    };
    let entry = match &args.build {
        Some(id) => unlisted
            .as_ref()
            .and_then(|u| u.get(id))
            .or_else(|| remote_doc.get(id))
            .with_context(|| format!("build {id} is not in {}", client.describe(BUILDS_JSON)))?,
        None if args.find_build_for_arch => remote_doc
            .builds
            .iter()
            .find(|b| wanted.iter().all(|a| b.arches.contains(a)))
            .with_context(|| {
                format!(
                    "no build in {} has {}",
                    client.describe(BUILDS_JSON),
                    wanted.join(", ")
                )
            })?,
        None => remote_doc
            .latest()
            .with_context(|| format!("{} lists no builds", client.describe(BUILDS_JSON)))?,
    };
    let id = entry.id.clone();
    let arches = if all_arches {
        entry.arches.clone()
    } else {
        for a in &wanted {
            if !entry.arches.contains(a) {
                bail!(
                    "build {id} has no {a} build in the store (arches: {}); --find-build-for-arch picks the newest that has",
                    entry.arches.join(", ")
                );
            }
        }
        wanted
    };
    let all_artifacts = args.artifact.iter().any(|a| a == "all");

    // Metadata of every arch first: it names the artifacts.
    let mut metas = Vec::new();
    let mut downloads = Vec::new();
    for arch in &arches {
        let mk = key::arch_file(&id, arch, "meta.json")?;
        let origin = client.describe(&mk);
        let fetched = read_json_doc(&client, &mk)
            .await?
            .with_context(|| match unlisted {
                Some(_) => {
                    format!("{origin}: not in the store (and builds.json does not list build {id})")
                }
                None => format!("{origin}: not in the store, though builds.json lists it"),
            })?;
        let meta = Meta::parse(&fetched.bytes, &origin)?;
        if meta.buildid != id {
            bail!("{origin}: buildid is {:?}, expected {id:?}", meta.buildid);
        }
        let dir = wd.build_arch_dir(&id, arch)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
        for name in &args.artifact {
            if name != "all" && !meta.images.contains_key(name) {
                bail!(
                    "{origin}: no artifact {name:?} (have: {})",
                    meta.images.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        for (name, art) in &meta.images {
            if all_artifacts || args.artifact.contains(name) {
                downloads.push(Download {
                    key: key::arch_file(&id, arch, &art.path)?,
                    dest: dir.join(&art.path),
                    expected: Expected {
                        sha256: art.sha256.clone(),
                        size: art.size,
                    },
                });
            }
        }
        // commitmeta.json and the package lock when the store has them, --file extras.
        let optional = [
            "commitmeta.json".to_string(),
            format!("manifest-lock.generated.{arch}.json"),
        ];
        for (name, required) in optional
            .iter()
            .map(|n| (n, false))
            .chain(args.file.iter().map(|n| (n, true)))
        {
            let k = key::arch_file(&id, arch, name)?;
            match read_json_doc(&client, &k).await? {
                Some(c) => {
                    if name.ends_with(".json") {
                        crate::parse::json_from_slice::<serde_json::Value>(
                            &c.bytes,
                            &client.describe(&k),
                        )?;
                    }
                    fsutil::atomic_write(&dir.join(name), &c.bytes)?;
                }
                None if required => bail!("{}: not in the store", client.describe(&k)),
                None => {}
            }
        }
        metas.push((arch.clone(), dir, meta, fetched.bytes));
    }

    // Artifacts, two files at a time, each in parallel ranges.
    let how = Transfer {
        jobs: store.options.jobs,
        part_size: store.options.part_size,
        sync: args.sync,
        direct: !args.buffered,
    };
    let started = std::time::Instant::now();
    let results: Vec<(Fetch, &Download)> = futures::stream::iter(&downloads)
        .map(|d| {
            let client = &client;
            async move {
                tracing::info!("fetch {}", client.describe(&d.key));
                download_verified(client, &d.key, &d.dest, &d.expected, how)
                    .await
                    .map(|f| (f, d))
            }
        })
        .buffer_unordered(2)
        .try_collect()
        .await?;
    let mut bytes = 0;
    for (f, d) in &results {
        match f {
            Fetch::Present => tracing::info!("{}: already here and verified", d.dest),
            Fetch::Fetched { bytes: n } => bytes += n,
        }
    }
    if !downloads.is_empty() {
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            "fetched {bytes} bytes in {secs:.1} s ({:.1} MiB/s)",
            bytes as f64 / 1048576.0 / secs.max(0.001)
        );
    }

    // meta.json last (a local reader sees the build only once its files are here),
    // then builds.json and latest under the work directory lock.
    for (arch, dir, meta, raw) in &metas {
        let meta_path = dir.join("meta.json");
        if args.decompress {
            let m = decompress(dir, meta, &results).await?;
            if &m != meta {
                fsutil::atomic_write(&meta_path, &m.to_json_bytes()?)?;
                continue;
            }
        }
        fsutil::atomic_write(&meta_path, raw)?;
        tracing::info!("build {id} ({arch}): meta.json written");
    }
    let lock = wd.lock()?;
    let is_latest = match (&unlisted, &remote) {
        (None, Some(r)) => {
            fsutil::atomic_write(&wd.builds_json_path(), &r.bytes)?;
            remote_doc.latest().is_some_and(|b| b.id == id)
        }
        // An unlisted build: the store's index plus this build, as the newest.
        _ => {
            let mut doc = remote_doc.clone();
            for a in &arches {
                doc.insert(&id, a)?;
            }
            fsutil::atomic_write(&wd.builds_json_path(), &doc.to_json_bytes()?)?;
            true
        }
    };
    if is_latest {
        wd.set_latest(Some(&id), &lock)?;
    }
    drop(lock);
    let pairs = [
        ("build", id.clone()),
        ("arches", arches.join(",")),
        ("latest", is_latest.to_string()),
    ];
    for (k, v) in &pairs {
        println!("{k}={v}");
    }
    ci::github_output(&pairs)?;
    Ok(())
}

/// Decompress fetched .xz/.gz/.zst artifacts in `dir` (with the xz, gzip, zstd tools),
/// verify `uncompressed-sha256` when meta.json has it, and return meta.json pointing
/// at the decompressed files, as coreos-assembler's `cosa decompress` does.
async fn decompress(dir: &Utf8Path, meta: &Meta, fetched: &[(Fetch, &Download)]) -> Result<Meta> {
    let mut m = meta.clone();
    for (_, d) in fetched {
        if d.dest.parent() != Some(dir) {
            continue;
        }
        let Some(name) = d.dest.file_name() else {
            continue;
        };
        let (tool, stem) = if let Some(s) = name.strip_suffix(".xz") {
            ("xz", s)
        } else if let Some(s) = name.strip_suffix(".gz") {
            ("gzip", s)
        } else if let Some(s) = name.strip_suffix(".zst") {
            ("zstd", s)
        } else {
            continue;
        };
        let Some((k, art)) = m.images.iter_mut().find(|(_, a)| a.path == name) else {
            continue;
        };
        let out = dir.join(stem);
        let src = d.dest.clone();
        let out2 = out.clone();
        let tool = tool.to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let file = std::fs::File::open(&src).with_context(|| format!("opening {src}"))?;
            fsutil::atomic_write_with(&out2, |w| {
                let mut child = std::process::Command::new(&tool)
                    .arg("-dc")
                    .stdin(file)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .with_context(|| format!("running {tool} -dc"))?;
                if let Some(mut so) = child.stdout.take() {
                    std::io::copy(&mut so, w)?;
                }
                let o = child.wait_with_output()?;
                if !o.status.success() {
                    bail!("{tool} -dc {src} failed: {}", crate::cmd::tail(&o.stderr));
                }
                Ok(())
            })
        })
        .await
        .context("decompressing task failed")??;
        let (sha, size) = crate::store::transfer::sha256_file(&out).await?;
        if let Some(want) = &art.uncompressed_sha256
            && *want != sha
        {
            let _ = std::fs::remove_file(&out);
            bail!(
                "{out}: uncompressed sha256 {sha} differs from images.{k}.uncompressed-sha256 {want}"
            );
        }
        art.path = stem.to_string();
        art.sha256 = sha;
        art.size = Some(size);
        art.uncompressed_sha256 = None;
        art.uncompressed_size = None;
        std::fs::remove_file(&d.dest).with_context(|| format!("removing {}", d.dest))?;
        tracing::info!("decompressed {name} -> {stem}");
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        super::Args::command().debug_assert();
    }
}
