//! Benchmark: the build directory at scale (10,000 builds), side by side in one run
//! with what a pipeline does today (`readlink builds/latest`) and with
//! coreos-assembler's own way of inserting a build (Python: load builds.json, insert,
//! dump with indent 4, rename; the steps of `cosalib/builds.py`).
//!
//! Run: `cargo bench --bench buildsdir`. Prints a Markdown table for BENCHMARKS.md.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use cosa::builds::BuildsJson;
use cosa::workdir::Workdir;

const BUILDS: usize = 10_000;
const RUNS: usize = 40;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_runs(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    f()?; // warm-up
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    Ok(median(v))
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().context("spawning")?;
    anyhow::ensure!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

const PY_INSERT: &str = r#"
import json, os, sys, tempfile
path = sys.argv[1]
with open(path) as f:
    b = json.load(f)
b['builds'].insert(0, {'id': sys.argv[2], 'arches': ['x86_64']})
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
with os.fdopen(fd, 'w') as f:
    json.dump(b, f, indent=4)
    f.flush(); os.fsync(f.fileno())
os.rename(tmp, path)
"#;

fn main() -> Result<()> {
    let td = tempfile::tempdir()?;
    let root =
        Utf8PathBuf::from_path_buf(td.path().to_path_buf()).map_err(|_| anyhow::anyhow!("utf8"))?;
    let wd = Workdir::init(root.join("wd"))?;
    let lock = wd.lock()?;
    let mut b = BuildsJson::default();
    for i in 0..BUILDS {
        let id = format!("1.20260101.{i}");
        b.insert(&id, "x86_64")?;
        std::fs::create_dir_all(wd.build_arch_dir(&id, "x86_64")?)?;
    }
    let latest = b.latest().map(|e| e.id.clone()).context("no builds")?;
    wd.write_builds(&b, &lock)?;
    wd.set_latest(Some(&latest), &lock)?;
    drop(lock);
    let store = root.join("store");
    std::fs::create_dir_all(&store)?;
    std::fs::write(store.join("builds.json"), b.to_json_bytes()?)?;
    let size = std::fs::metadata(wd.builds_json_path())?.len();

    let exe = env!("CARGO_BIN_EXE_cosa-changed");
    let link = wd.latest_link();
    let readlink = time_runs(RUNS, || run_ok(Command::new("readlink").arg(link.as_str())))?;
    let since = time_runs(RUNS, || {
        run_ok(Command::new(exe).args(["--workdir", wd.root().as_str(), "--since", &latest]))
    })?;
    let against = time_runs(RUNS, || {
        run_ok(Command::new(exe).args([
            "--workdir",
            wd.root().as_str(),
            "--against",
            store.as_str(),
            "--arch",
            "x86_64",
        ]))
    })?;

    // Inserts: each run adds a new build (so the file keeps growing by one entry).
    let mut n = 0;
    let insert = time_runs(RUNS, || {
        n += 1;
        let lock = wd.lock()?;
        let mut b = wd.read_builds()?;
        b.insert(&format!("2.0.{n}"), "x86_64")?;
        wd.write_builds(&b, &lock)
    })?;
    let mut m = 0;
    let py_insert = time_runs(RUNS, || {
        m += 1;
        run_ok(Command::new("python3").args([
            "-c",
            PY_INSERT,
            wd.builds_json_path().as_str(),
            &format!("3.0.{m}"),
        ]))
    })?;

    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let ratio = |a: Duration, b: Duration| format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64());
    println!(
        "{BUILDS} builds, builds.json {:.1} MiB, median of {RUNS} runs each\n",
        size as f64 / (1 << 20) as f64
    );
    println!("| operation | time | ratio to peer |");
    println!("| --- | --- | --- |");
    println!(
        "| `readlink builds/latest` (peer, process) | {} | 1.00× |",
        ms(readlink)
    );
    println!(
        "| `cosa-changed --since <latest>` (process) | {} | {} of readlink |",
        ms(since),
        ratio(since, readlink)
    );
    println!(
        "| `cosa-changed --against <file store>` (process, parses both builds.json) | {} | {} of readlink |",
        ms(against),
        ratio(against, readlink)
    );
    println!(
        "| builds.json insert, python3 as coreos-assembler (peer, process) | {} | 1.00× |",
        ms(py_insert)
    );
    println!(
        "| builds.json insert, cosa library (lock, parse, validate, insert, atomic write + fsync) | {} | {} of python3 |",
        ms(insert),
        ratio(insert, py_insert)
    );
    Ok(())
}
