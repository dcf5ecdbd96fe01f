//! Benchmark: cosa-compose on the example OS, side by side in one run with what a
//! user would do by hand (`dnf --installroot install` + `ostree commit`), and the
//! no-change decision against a full compose.
//!
//! Run: `cargo bench --bench compose`. Prints a Markdown table for BENCHMARKS.md.

use std::process::Command;
use std::time::Duration;

#[path = "common/mod.rs"]
mod common;
use common::*;

use anyhow::Result;
use camino::Utf8PathBuf;

const RUNS: usize = 5;

fn main() -> Result<()> {
    let root = Utf8PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let td = tempfile::Builder::new()
        .prefix("cosa-bench-compose")
        .tempdir_in("/var/tmp")?;
    let base =
        Utf8PathBuf::from_path_buf(td.path().to_path_buf()).map_err(|_| anyhow::anyhow!("utf8"))?;
    let repo = base.join("repo");
    sh(Command::new(root.join("examples/build-repo.sh")).arg(repo.as_str()))?;
    let wd = base.join("wd");
    sh(Command::new(root.join("examples/init-workdir.sh"))
        .args([wd.as_str(), &format!("file://{repo}")]))?;
    let exe = env!("CARGO_BIN_EXE_cosa-compose");
    let compose = |extra: &[&str]| {
        sh(Command::new(exe)
            .args(["--workdir", wd.as_str(), "--keep-last-n", "0"])
            .args(extra))
    };

    // Warm-up: fills the dnf cache, as a CI cache would.
    compose(&[])?;
    let mut full = Vec::new();
    for _ in 0..RUNS {
        full.push(time(|| compose(&["--force"]).map(|_| ()))?);
    }
    // A real change each run: the repo alternates between two builds of it, one with
    // example-hello's release bumped, so every compose resolves, decides, installs.
    let repo2 = base.join("repo2");
    sh(Command::new(root.join("examples/build-repo.sh")).args([
        repo2.as_str(),
        "--release-bump",
        "example-hello=2",
    ]))?;
    let repo_file = wd.join("src/config/example.repo");
    let text1 = std::fs::read_to_string(&repo_file)?;
    let text2 = text1.replace(&format!("file://{repo}"), &format!("file://{repo2}"));
    let mut changed = Vec::new();
    for i in 0..RUNS {
        std::fs::write(&repo_file, if i % 2 == 0 { &text2 } else { &text1 })?;
        changed.push(time(|| {
            let out = compose(&[])?;
            anyhow::ensure!(out.starts_with("changed=true"), "expected a change: {out}");
            Ok(())
        })?);
    }
    let mut nochange = Vec::new();
    for _ in 0..RUNS * 2 {
        nochange.push(time(|| {
            let out = compose(&[])?;
            anyhow::ensure!(
                out.starts_with("changed=false"),
                "expected no change: {out}"
            );
            Ok(())
        })?);
    }

    // By hand: dnf into an installroot (same repo, same cache state), then ostree commit.
    let pkgs = [
        "example-filesystem",
        "example-shell",
        "example-release",
        "example-kernel",
        "example-postinstall",
        "example-hello",
    ];
    let home = base.join("home");
    std::fs::create_dir_all(&home)?;
    std::fs::write(home.join(".rpmmacros"), "%_dbpath /usr/lib/sysimage/rpm\n")?;
    let hand_repo = base.join("hand-repo");
    sh(Command::new("ostree").args(["init", "--mode=archive", "--repo", hand_repo.as_str()]))?;
    let by_hand = |i: usize| -> Result<()> {
        let r = base.join(format!("hand-root-{i}"));
        sh(Command::new("dnf")
            .env("HOME", home.as_str())
            .args([
                "-y",
                "-q",
                &format!("--installroot={r}"),
                &format!("--setopt=reposdir={}", wd.join("src/config")),
                &format!("--setopt=cachedir={}", base.join("hand-cache")),
                "--setopt=keepcache=True",
                "--releasever=1",
                "--setopt=install_weak_deps=False",
                "--setopt=tsflags=nodocs",
                "install",
            ])
            .args(pkgs))?;
        sh(Command::new("ostree").args([
            "commit",
            "--repo",
            hand_repo.as_str(),
            "--branch=hand",
            &format!("--tree=dir={r}"),
        ]))?;
        Ok(())
    };
    by_hand(0)?; // warm-up, fills its cache
    let mut hand = Vec::new();
    for i in 1..=RUNS {
        hand.push(time(|| by_hand(i))?);
    }

    let (full, changed, nochange, hand) = (
        median(full),
        median(changed),
        median(nochange),
        median(hand),
    );
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    println!(
        "Example OS (7 packages, 31 MiB installed), warm dnf cache, repo on file://; median of {RUNS} runs (no-change: {})\n",
        RUNS * 2
    );
    println!("| operation | time | ratio |");
    println!("| --- | --- | --- |");
    println!(
        "| by hand: `dnf --installroot install` + `ostree commit` (peer) | {} | 1.00× |",
        s(hand)
    );
    println!(
        "| `cosa-compose --force` (depsolve, install, postprocess, OSTree layout, commit, export tar, meta.json) | {} | {:.2}× of by hand |",
        s(full),
        full.as_secs_f64() / hand.as_secs_f64()
    );
    println!(
        "| `cosa-compose` after one package changed (repomd check, depsolve, decision, then as above) | {} | {:.2}× of by hand |",
        s(changed),
        changed.as_secs_f64() / hand.as_secs_f64()
    );
    println!(
        "| `cosa-compose`, nothing changed (fast path) | {} | {:.2}% of a full compose |",
        ms(nochange),
        100.0 * nochange.as_secs_f64() / full.as_secs_f64()
    );
    Ok(())
}
