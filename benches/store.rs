//! Benchmark: upload and fetch of a 2 GiB build (4 artifacts of 512 MiB) through
//! S3 servers on loopback, side by side in one run with `aws s3 cp --recursive`
//! (Debian's awscli, `/usr/bin/aws`) and with plain `cp -r` of the same files as
//! the bound.
//!
//! Run: `tools/test-servers.sh s3s-fs garage && cargo bench --bench store`.
//! Needs `/usr/bin/aws` (`apt-get install awscli`). Servers not installed are left
//! out of the table (said on stderr); `COSA_BENCH_SERVERS=s3s-fs` (comma-separated)
//! runs only those; `COSA_BENCH_RUNS` sets the runs per operation (default 5) and
//! `COSA_BENCH_COSA_ARGS` adds options to cosa-upload and cosa-fetch. Prints a
//! Markdown table for BENCHMARKS.md, with the mean CPU seconds per run of the
//! client command and of the server: on loopback both share the machine's cores,
//! so a client that needs less CPU leaves more to the server.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use cosa::meta::{Artifact, Meta};

const ARTIFACTS: usize = 4;
const ARTIFACT_SIZE: usize = 512 << 20;
/// Runs of each operation (`COSA_BENCH_RUNS`, default 5).
fn runs() -> usize {
    std::env::var("COSA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(5)
}
const BUCKET: &str = "bench";
const AWS: &str = "/usr/bin/aws";

fn tools() -> Utf8PathBuf {
    let base = std::env::var("COSA_TEST_TOOLS")
        .ok()
        .filter(|s| !s.is_empty())
        .map(Utf8PathBuf::from)
        .unwrap_or_else(|| {
            Utf8PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/cosa-test-tools")
        });
    base.join("v1")
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdout(Stdio::null()).output().context("spawning")?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// CPU seconds (user + system) from `/proc/<pid>/stat`: the process's own
/// (`children` false) or that of its waited-for children (`children` true).
fn cpu_secs(pid: &str, children: bool) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14/15 (utime/stime) and 16/17 (cutime/cstime), counted from 3 here.
    let (u, s) = if children { (13, 14) } else { (11, 12) };
    let ticks: f64 = f[u].parse::<f64>()? + f[s].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// One operation measured over the runs: the best time, the best time of the
/// operation followed by `sync` (its data on the disk: cosa-fetch does not fsync by
/// default, nor does the awscli), and the mean CPU seconds of the client (the
/// command run) and of the server per run.
struct Measured {
    /// Each run's time, in order.
    times: Vec<Duration>,
    best: Duration,
    best_synced: Duration,
    client_cpu: f64,
    server_cpu: f64,
}

/// One side of a comparison: `prepare` (not timed) before each run of `run`.
struct Side<'a> {
    prepare: Box<dyn FnMut() -> Result<()> + 'a>,
    run: Box<dyn FnMut() -> Result<()> + 'a>,
}

impl<'a> Side<'a> {
    fn new(prepare: impl FnMut() -> Result<()> + 'a, run: impl FnMut() -> Result<()> + 'a) -> Self {
        Side {
            prepare: Box::new(prepare),
            run: Box::new(run),
        }
    }
}

/// Runs of each side, alternating (ours, theirs, ours, ...) so that a slow spell of
/// the machine falls on both; `sync` before each run, so that no run's writeback
/// falls into the next one's time.
fn measure(server: u32, mut sides: Vec<Side<'_>>) -> Result<Vec<Measured>> {
    let sp = server.to_string();
    let mut acc: Vec<(Vec<Duration>, Vec<Duration>, f64, f64)> =
        sides.iter().map(|_| Default::default()).collect();
    let n = runs();
    for _ in 0..n {
        for (side, acc) in sides.iter_mut().zip(acc.iter_mut()) {
            (side.prepare)()?;
            run_ok(&mut Command::new("sync"))?;
            let (c0, s0) = (cpu_secs("self", true)?, cpu_secs(&sp, false)?);
            let t = Instant::now();
            (side.run)()?;
            let op = t.elapsed();
            let (c1, s1) = (cpu_secs("self", true)?, cpu_secs(&sp, false)?);
            run_ok(&mut Command::new("sync"))?;
            acc.0.push(op);
            acc.1.push(t.elapsed());
            acc.2 += c1 - c0;
            acc.3 += s1 - s0;
        }
    }
    acc.into_iter()
        .map(|(v, synced, c, s)| {
            Ok(Measured {
                best: v.iter().copied().min().context("no runs")?,
                times: v,
                best_synced: synced.into_iter().min().context("no runs")?,
                client_cpu: c / n as f64,
                server_cpu: s / n as f64,
            })
        })
        .collect()
}

/// The median over rounds of the peer's time over ours: each round ran both sides
/// back to back, so a slow spell of the machine weighs on both of a pair.
fn median_ratio(ours: &Measured, peer: &Measured) -> f64 {
    let mut r: Vec<f64> = ours
        .times
        .iter()
        .zip(&peer.times)
        .map(|(o, p)| p.as_secs_f64() / o.as_secs_f64())
        .collect();
    r.sort_by(f64::total_cmp);
    match r.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => r[n / 2],
        n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Server {
    name: &'static str,
    child: std::process::Child,
    endpoint: String,
    region: &'static str,
    key: &'static str,
    secret: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(name: &'static str, dir: &Utf8Path) -> Result<Option<Server>> {
    let port = free_port()?;
    let root = dir.join(name);
    std::fs::create_dir_all(&root)?;
    let (child, region, key, secret) = match name {
        "s3s-fs" => {
            let bin = tools().join("bin/s3s-fs");
            if !bin.is_file() {
                return Ok(None);
            }
            std::fs::create_dir_all(root.join(BUCKET))?;
            let c = Command::new(bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", "AKBENCH", "--secret-key", "SKBENCH"])
                .arg(&root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            (c, "us-east-1", "AKBENCH", "SKBENCH")
        }
        _ => {
            let bin = tools().join("bin/garage");
            if !bin.is_file() {
                return Ok(None);
            }
            let rpc = free_port()?;
            let cfg = root.join("garage.toml");
            std::fs::write(
                &cfg,
                format!(
                    "metadata_dir = \"{root}/meta\"\ndata_dir = \"{root}/data\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{port}\"\n\
                     root_domain = \".s3.garage.localhost\"\n",
                    "cd".repeat(32)
                ),
            )?;
            let c = Command::new(bin)
                .arg("-c")
                .arg(&cfg)
                .args(["server", "--single-node", "--default-bucket"])
                .env("GARAGE_DEFAULT_ACCESS_KEY", "GK00112233445566778899aabb")
                .env("GARAGE_DEFAULT_SECRET_KEY", "ee".repeat(32))
                .env("GARAGE_DEFAULT_BUCKET", BUCKET)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            (
                c,
                "garage",
                "GK00112233445566778899aabb",
                "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
            )
        }
    };
    let s = Server {
        name,
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        region,
        key,
        secret,
    };
    // Ready when the aws CLI can list the bucket.
    let cfg = dir.join("aws-config");
    loop {
        let ok = aws(&s, &cfg)
            .args(["s3", "ls", &format!("s3://{BUCKET}/")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Some(s))
}

fn env(s: &Server, c: &mut Command) {
    c.env("AWS_ACCESS_KEY_ID", s.key)
        .env("AWS_SECRET_ACCESS_KEY", s.secret)
        .env("AWS_REGION", s.region)
        .env("AWS_DEFAULT_REGION", s.region)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE");
}

fn aws(s: &Server, cfg: &Utf8Path) -> Command {
    let mut c = Command::new(AWS);
    env(s, &mut c);
    c.env("AWS_CONFIG_FILE", cfg)
        .args(["--endpoint-url", &s.endpoint]);
    c
}

fn cosa(s: &Server, name: &str) -> Command {
    let path = match name {
        "cosa-upload" => env!("CARGO_BIN_EXE_cosa-upload"),
        _ => env!("CARGO_BIN_EXE_cosa-fetch"),
    };
    let mut c = Command::new(path);
    env(s, &mut c);
    c.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_ENDPOINT_URL", &s.endpoint)
        .env("RUST_LOG", "warn");
    // Options for both binaries, to try settings (e.g. `--jobs 4`).
    if let Ok(extra) = std::env::var("COSA_BENCH_COSA_ARGS") {
        c.args(extra.split_whitespace());
    }
    c
}

/// Remove upload number `n` of `tool` from the store (not the first: it is fetched
/// later), so that the runs do not fill the disk.
fn drop_upload(s: &Server, cfg: &Utf8Path, tool: &str, n: usize) -> Result<()> {
    if n < 2 {
        return Ok(());
    }
    run_ok(aws(s, cfg).args([
        "s3",
        "rm",
        "--recursive",
        "--quiet",
        &format!("s3://{BUCKET}/{tool}{n}/"),
    ]))
}

fn mibs(d: Duration) -> f64 {
    (ARTIFACTS * ARTIFACT_SIZE) as f64 / 1048576.0 / d.as_secs_f64()
}

fn main() -> Result<()> {
    if !Utf8Path::new(AWS).exists() {
        bail!("{AWS} is missing: apt-get install awscli");
    }
    let td = tempfile::Builder::new()
        .prefix("cosa-bench-store-")
        .tempdir_in("/var/tmp")?;
    let dir = Utf8PathBuf::from_path_buf(td.path().to_path_buf())
        .map_err(|p| anyhow::anyhow!("non-UTF-8 {}", p.display()))?;
    std::fs::write(
        dir.join("aws-config"),
        "[default]\ns3 =\n    addressing_style = path\n",
    )?;

    // The build: 4 × 512 MiB of random bytes, with meta.json and builds.json.
    let wd = cosa::workdir::Workdir::init(dir.join("wd"))?;
    let (id, arch) = ("1.0", "x86_64");
    let arch_dir = wd.build_arch_dir(id, arch)?;
    std::fs::create_dir_all(&arch_dir)?;
    let mut meta: Meta = serde_json::from_value(serde_json::json!({
        "buildid": id, "name": "bench", "ostree-commit": "a".repeat(64),
        "ostree-version": id, "ostree-timestamp": "2026-01-01T00:00:00Z",
    }))?;
    let mut rng = fastrand::Rng::with_seed(42);
    let mut buf = vec![0u8; ARTIFACT_SIZE];
    for i in 0..ARTIFACTS {
        rng.fill(&mut buf);
        let name = format!("bench-{id}-p{i}.{arch}.raw");
        std::fs::write(arch_dir.join(&name), &buf)?;
        let (sha256, size) = cosa::fsutil::sha256_file(&arch_dir.join(&name))?;
        meta.images.insert(
            format!("p{i}"),
            Artifact {
                path: name,
                sha256,
                size: Some(size),
                uncompressed_sha256: None,
                uncompressed_size: None,
                skip_compression: None,
                extra: Default::default(),
            },
        );
    }
    drop(buf);
    let lock = wd.lock()?;
    wd.write_meta(&meta, arch, &lock)?;
    let mut b = wd.read_builds()?;
    b.insert(id, arch)?;
    wd.write_builds(&b, &lock)?;
    wd.set_latest(Some(id), &lock)?;
    drop(lock);

    let cpdest = dir.join("cp");
    let cp = measure(
        std::process::id(),
        vec![Side::new(
            || {
                let _ = std::fs::remove_dir_all(&cpdest);
                Ok(())
            },
            || run_ok(Command::new("cp").arg("-r").arg(&arch_dir).arg(&cpdest)),
        )],
    )?
    .remove(0);
    let _ = std::fs::remove_dir_all(&cpdest);
    let mut rows = vec![format!(
        "| plain `cp -r` (bound) | {:.2} s | {:.0} MiB/s | – | – | {:.2} s | – | – | – | – |",
        cp.best.as_secs_f64(),
        mibs(cp.best),
        cp.best_synced.as_secs_f64()
    )];

    let only = std::env::var("COSA_BENCH_SERVERS").unwrap_or_default();
    for name in ["s3s-fs", "garage"] {
        if !only.is_empty() && !only.split(',').any(|o| o == name) {
            continue;
        }
        let Some(s) = start(name, &dir)? else {
            eprintln!("{name} is not installed: left out (tools/test-servers.sh {name})");
            continue;
        };
        let cfg = dir.join("aws-config");
        let (cosa_no, aws_no) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let up = measure(
            s.child.id(),
            vec![
                Side::new(
                    || drop_upload(&s, &cfg, "cosa", cosa_no.get()),
                    || {
                        cosa_no.set(cosa_no.get() + 1);
                        run_ok(cosa(&s, "cosa-upload").args([
                            "--workdir",
                            wd.root().as_str(),
                            "--url",
                            &format!("s3://{BUCKET}/cosa{}", cosa_no.get()),
                        ]))
                    },
                ),
                Side::new(
                    || drop_upload(&s, &cfg, "aws", aws_no.get()),
                    || {
                        aws_no.set(aws_no.get() + 1);
                        run_ok(aws(&s, &cfg).args([
                            "s3",
                            "cp",
                            "--recursive",
                            "--quiet",
                            arch_dir.as_str(),
                            &format!("s3://{BUCKET}/aws{}/{id}/{arch}/", aws_no.get()),
                        ]))
                    },
                ),
            ],
        )?;
        let (dest, awsdest) = (dir.join("fetch"), dir.join("awsfetch"));
        let down = measure(
            s.child.id(),
            vec![
                Side::new(
                    || {
                        let _ = std::fs::remove_dir_all(&dest);
                        cosa::workdir::Workdir::init(dest.clone()).map(|_| ())
                    },
                    || {
                        run_ok(cosa(&s, "cosa-fetch").args([
                            "--workdir",
                            dest.as_str(),
                            "--url",
                            &format!("s3://{BUCKET}/cosa1"),
                            "--arch",
                            arch,
                            "--artifact",
                            "all",
                        ]))
                    },
                ),
                Side::new(
                    || {
                        let _ = std::fs::remove_dir_all(&awsdest);
                        Ok(())
                    },
                    || {
                        run_ok(aws(&s, &cfg).args([
                            "s3",
                            "cp",
                            "--recursive",
                            "--quiet",
                            &format!("s3://{BUCKET}/aws1/{id}/{arch}/"),
                            awsdest.as_str(),
                        ]))
                    },
                ),
            ],
        )?;
        let [cosa_up, aws_up]: [Measured; 2] =
            up.try_into().map_err(|_| anyhow::anyhow!("two sides"))?;
        let [cosa_down, aws_down]: [Measured; 2] =
            down.try_into().map_err(|_| anyhow::anyhow!("two sides"))?;
        let _ = std::fs::remove_dir_all(dir.join("fetch"));
        let _ = std::fs::remove_dir_all(dir.join("awsfetch"));
        for (op, c, a) in [("upload", cosa_up, aws_up), ("fetch", cosa_down, aws_down)] {
            rows.push(format!(
                "| {name} {op}: `aws s3 cp --recursive` (peer) | {:.2} s | {:.0} MiB/s | 1.00× | – | {:.2} s | 1.00× | {:.2}× of cp | {:.1} s | {:.1} s |",
                a.best.as_secs_f64(),
                mibs(a.best),
                a.best_synced.as_secs_f64(),
                mibs(a.best) / mibs(cp.best),
                a.client_cpu,
                a.server_cpu
            ));
            rows.push(format!(
                "| {name} {op}: cosa-{} | {:.2} s | {:.0} MiB/s | **{:.2}×** of aws | {:.2}× | {:.2} s | {:.2}× | {:.2}× of cp | {:.1} s | {:.1} s |",
                if op == "upload" { "upload" } else { "fetch (sha256-verified)" },
                c.best.as_secs_f64(),
                mibs(c.best),
                mibs(c.best) / mibs(a.best),
                median_ratio(&c, &a),
                c.best_synced.as_secs_f64(),
                a.best_synced.as_secs_f64() / c.best_synced.as_secs_f64(),
                mibs(c.best) / mibs(cp.best),
                c.client_cpu,
                c.server_cpu
            ));
        }
        eprintln!("{} done", s.name);
        drop(s);
        let _ = std::fs::remove_dir_all(dir.join(name));
    }
    println!(
        "2 GiB build ({ARTIFACTS} × {} MiB), best of {} runs each\n",
        ARTIFACT_SIZE >> 20,
        runs()
    );
    println!(
        "| operation | time | throughput | ratio to peer | median of paired ratios | time + `sync` | ratio to peer | ratio to cp | client CPU | server CPU |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
