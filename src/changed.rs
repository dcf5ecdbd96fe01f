//! `cosa-changed`: whether downstream CI jobs have work to do.
//!
//! coreos-assembler exits 0 whether or not `cosa build` made a new build; pipelines
//! compare `readlink builds/latest` before and after. This makes that comparison a
//! step with outputs: against a build ID (`--since`), or against a store (`--against`):
//! changed when the local latest build, for this arch, is not in the store yet.

use anyhow::Result;
use camino::Utf8PathBuf;
use clap::Parser;
use serde::Serialize;

use crate::ci;
use crate::cli::{Command, GlobalArgs, Outcome};
use crate::names::{host_arch, validate_arch, validate_build_id};
use crate::store::Store;
use crate::workdir::Workdir;

/// Decide whether the build directory moved, and tell CI.
#[derive(Parser, Debug)]
#[command(name = "cosa-changed", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Changed when builds/latest is not this build ID; `none` means "no build before".
    #[arg(
        long,
        value_name = "ID|none",
        required_unless_present = "against",
        conflicts_with = "against"
    )]
    pub since: Option<String>,
    /// Changed when the local latest build (for --arch) is not in this store's builds.json.
    #[arg(long, value_name = "URL")]
    pub against: Option<String>,
    /// The architecture to compare with --against.
    #[arg(long, default_value = host_arch())]
    pub arch: String,
    /// Also write COSA_CHANGED, COSA_BUILD, COSA_PREVIOUS to this GitLab dotenv file.
    #[arg(long, value_name = "FILE")]
    pub dotenv: Option<Utf8PathBuf>,
    /// Print the decision as JSON instead of key=value lines.
    #[arg(long)]
    pub json: bool,
    /// Exit with 3 when nothing changed (0 when changed), instead of 0 for both.
    #[arg(long)]
    pub exit_code: bool,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub changed: bool,
    /// The local latest build ("" when there is none).
    pub build: String,
    /// What it is compared with: the --since ID, or the store's latest ("" for none).
    pub previous: String,
}

/// Compare `builds/latest` with `since` (`None`: no previous build).
pub fn since(wd: &Workdir, since: Option<&str>) -> Result<Decision> {
    if let Some(s) = since {
        validate_build_id(s)?;
    }
    let latest = wd.latest_id()?;
    Ok(Decision {
        changed: latest.as_deref() != since,
        build: latest.unwrap_or_default(),
        previous: since.unwrap_or_default().to_string(),
    })
}

/// Compare the local latest build for `arch` with a store's builds.json.
pub fn against(wd: &Workdir, store: &Store, arch: &str) -> Result<Decision> {
    validate_arch(arch)?;
    let latest = wd.latest_id()?;
    if let Some(id) = &latest {
        // The latest build must really have this arch locally, or there is nothing to publish.
        let local = wd.read_builds()?;
        if !local.has(id, arch) {
            anyhow::bail!("builds/latest is {id}, which builds.json does not list for {arch}");
        }
    }
    let remote = store.read_builds()?;
    let previous = remote
        .as_ref()
        .and_then(|b| b.latest())
        .map(|b| b.id.clone())
        .unwrap_or_default();
    let changed = match (&latest, &remote) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(id), Some(r)) => !r.has(id, arch),
    };
    Ok(Decision {
        changed,
        build: latest.unwrap_or_default(),
        previous,
    })
}

impl Decision {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("changed", self.changed.to_string()),
            ("build", self.build.clone()),
            ("previous", self.previous.clone()),
        ]
    }
}

impl Command for Args {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }

    fn run(self) -> Result<Outcome> {
        let wd = self.global.open_workdir()?;
        let d = if let Some(url) = &self.against {
            against(&wd, &Store::open(url)?, &self.arch)?
        } else {
            let s = self.since.as_deref().filter(|s| *s != "none");
            since(&wd, s)?
        };
        let pairs = d.pairs();
        if self.json {
            println!("{}", serde_json::to_string(&d)?);
        } else {
            for (k, v) in &pairs {
                println!("{k}={v}");
            }
        }
        ci::github_output(&pairs)?;
        if let Some(path) = &self.dotenv {
            let env: Vec<_> = pairs
                .iter()
                .map(|(k, v)| match *k {
                    "changed" => ("COSA_CHANGED", v.clone()),
                    "build" => ("COSA_BUILD", v.clone()),
                    _ => ("COSA_PREVIOUS", v.clone()),
                })
                .collect();
            ci::write_dotenv(path, &env)?;
        }
        tracing::info!(
            "{}: latest build {:?}, compared with {:?}",
            if d.changed { "changed" } else { "unchanged" },
            d.build,
            d.previous
        );
        Ok(if self.exit_code && !d.changed {
            Outcome::Unchanged
        } else {
            Outcome::Success
        })
    }
}
