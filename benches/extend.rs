//! Benchmark: cosa-extend on the example OS made bigger (256 MiB of the host's
//! libraries and data added to the tree, so that the disk holds real, compressible
//! data), all in one run:
//!
//! - each platform format: `cosa-extend --platform P --force` (the whole command:
//!   base checked against meta.json, boot filesystem copied and edited, conversion,
//!   wrapping, SHA-256 of the result, meta.json) vs the same `qemu-img convert` of the
//!   same base run directly (plus the same tar/gzip wrapping for gcp, OVA, kubevirt),
//!   and that plus the SHA-256 of the result (what registering it in meta.json
//!   costs; `openssl dgst -sha256`, which uses the CPU's SHA extensions as
//!   coreos-assembler's Python hashlib does);
//! - compress: `cosa-extend compress --artifact qemu` vs `xz -T0 -9` and
//!   `zstd -T0 -10` of the same file;
//! - every platform in one call vs one call per platform.
//!
//! Run: `cargo bench --bench extend`. Prints Markdown tables for BENCHMARKS.md.
//! `COSA_BENCH_SECTIONS=formats,compress,all` (comma-separated) runs only some
//! sections; `COSA_BENCH_PLATFORMS=aws,gcp` only some formats.

use std::process::Command;

#[path = "common/mod.rs"]
mod common;
use common::*;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

const RUNS: usize = 3;

/// The by-hand peer of a platform: `$1` base qcow2, `$2` output, `$3` scratch dir.
fn peer_script(platform: &str) -> Option<&'static str> {
    Some(match platform {
        "aliyun" | "digitalocean" | "exoscale" | "openstack" | "oraclecloud" | "proxmoxve" => {
            r#"qemu-img convert -O qcow2 -o compat=1.1 "$1" "$2""#
        }
        "applehv" | "hetzner" | "vultr" => r#"qemu-img convert -O raw "$1" "$2""#,
        "aws" => {
            r#"qemu-img convert -O vmdk -o adapter_type=lsilogic,subformat=streamOptimized,compat6 "$1" "$2""#
        }
        "azure" | "azurestack" => {
            r#"qemu-img convert -O vpc -o subformat=fixed,force_size=on "$1" "$2""#
        }
        "hyperv" => r#"qemu-img convert -O vhdx "$1" "$2""#,
        "ibmcloud" => {
            r#"qemu-img convert -O qcow2 -o compat=1.1 "$1" "$2" && qemu-img resize -q "$2" 100G"#
        }
        "nutanix" => r#"qemu-img convert -c -O qcow2 -o compat=1.1 "$1" "$2""#,
        "gcp" => {
            r#"qemu-img convert -O raw "$1" "$3/disk.raw"
tar --format=oldgnu -S -C "$3" -cf - disk.raw | gzip -6 -n > "$2"
rm -f "$3/disk.raw""#
        }
        "vmware" | "virtualbox" => {
            r#"qemu-img convert -O vmdk -o adapter_type=lsilogic,subformat=streamOptimized,compat6 "$1" "$3/disk.vmdk"
echo '<Envelope/>' > "$3/coreos.ovf"
tar --format=ustar -C "$3" -cf "$2" coreos.ovf disk.vmdk
rm -f "$3/disk.vmdk""#
        }
        "kubevirt" => {
            r#"mkdir -p "$3/l/disk" "$3/a"
qemu-img convert -O qcow2 -o compat=1.1 "$1" "$3/l/disk/disk.qcow2"
tar -C "$3/l" -cf "$3/a/layer.tar" disk
openssl dgst -sha256 "$3/a/layer.tar" >/dev/null
tar -C "$3/a" -cf "$2" layer.tar
rm -rf "$3/l" "$3/a""#
        }
        _ => return None,
    })
}

/// Whether `COSA_BENCH_<var>` (comma-separated; unset: everything) selects `name`.
fn selected(var: &str, name: &str) -> bool {
    match std::env::var(format!("COSA_BENCH_{var}")) {
        Ok(v) if !v.trim().is_empty() => v.split(',').any(|x| x.trim() == name),
        _ => true,
    }
}

fn main() -> Result<()> {
    let root = Utf8PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let td = tempfile::Builder::new()
        .prefix("cosa-bench-extend")
        .tempdir_in("/var/tmp")?;
    let base =
        Utf8PathBuf::from_path_buf(td.path().to_path_buf()).map_err(|_| anyhow::anyhow!("utf8"))?;
    let repo = base.join("repo");
    sh(Command::new(root.join("examples/build-repo.sh")).arg(repo.as_str()))?;
    let wd = base.join("wd");
    sh(Command::new(root.join("examples/init-workdir.sh"))
        .args([wd.as_str(), &format!("file://{repo}")]))?;
    // 256 MiB of real (compressible) data: the host's libraries and shared data.
    let cfg = wd.join("src/config");
    bash(
        r#"tar -cf - /usr/lib/x86_64-linux-gnu /usr/share /usr/lib 2>/dev/null | head -c 268435456 > "$1/big.img" || true
test "$(stat -c %s "$1/big.img")" = 268435456"#,
        &[cfg.as_str()],
    )?;
    let m = cfg.join("manifest.yaml");
    let text = std::fs::read_to_string(&m)?.replace(
        "add-files:\n",
        "add-files:\n  - [\"big.img\", \"/usr/share/example/big.img\"]\n",
    );
    std::fs::write(&m, text)?;
    sh(Command::new(env!("CARGO_BIN_EXE_cosa-compose")).args(["--workdir", wd.as_str()]))?;
    let exe = env!("CARGO_BIN_EXE_cosa-extend");
    let extend = |args: &[&str]| -> Result<()> {
        sh(Command::new(exe)
            .env_remove("GITHUB_OUTPUT")
            .args(["--workdir", wd.as_str()])
            .args(args))
        .map(|_| ())
    };
    // `sync` before each timed command: none inherits another's writeback.
    let flush = || sh(&mut Command::new("sync")).map(|_| ());
    extend(&["--platform", "qemu"])?;
    let w = cosa::workdir::Workdir::open(wd.clone())?;
    let id = w.latest_id()?.context("no build")?;
    let meta = w.read_meta(&id, "x86_64")?;
    let arch_dir = w.build_arch_dir(&id, "x86_64")?;
    let q = meta.images.get("qemu").context("no qemu image")?;
    let qcow2 = arch_dir.join(&q.path);
    let qsize = q.size.unwrap_or(0);
    let scratch = base.join("peer");
    std::fs::create_dir_all(&scratch)?;
    let out = scratch.join("out");

    // Formats.
    if selected("SECTIONS", "formats") {
        println!(
            "Base: the qemu disk (qcow2, 3 GiB virtual, {:.0} MiB of data); median of {RUNS} runs, alternating\n",
            qsize as f64 / (1 << 20) as f64
        );
        println!(
            "| platform | output | cosa-extend --platform P --force | qemu-img convert (+ wrapping) | ratio | + SHA-256 (openssl) | ratio |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        let derived: Vec<&str> = cosa::extend::platforms::PLATFORMS
            .iter()
            .filter(|p| peer_script(p.name).is_some() && selected("PLATFORMS", p.name))
            .map(|p| p.name)
            .collect();
        for p in &derived {
            let script = peer_script(p).context("peer")?;
            let peer = || bash(script, &[qcow2.as_str(), out.as_str(), scratch.as_str()]);
            let hash =
                || sh(Command::new("openssl").args(["dgst", "-sha256"]).arg(&out)).map(|_| ());
            extend(&["--platform", p, "--force"])?;
            peer()?;
            let (mut ours, mut theirs, mut hashed) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..RUNS {
                flush()?;
                ours.push(time(|| extend(&["--platform", p, "--force"]))?);
                flush()?;
                let t = time(peer)?;
                theirs.push(t);
                hashed.push(t + time(hash)?);
            }
            let (o, t, h) = (median(ours), median(theirs), median(hashed));
            let m = w.read_meta(&id, "x86_64")?;
            let a = m.images.get(*p).context("not registered")?;
            println!(
                "| {p} | {} {:.0} MiB | {} | {} | {:.2}× | {} | {:.2}× |",
                a.path
                    .rsplit_once(&format!("{p}.x86_64."))
                    .map_or("", |x| x.1),
                a.size.unwrap_or(0) as f64 / (1 << 20) as f64,
                secs(o),
                secs(t),
                o.as_secs_f64() / t.as_secs_f64(),
                secs(h),
                o.as_secs_f64() / h.as_secs_f64()
            );
            let _ = std::fs::remove_file(&out);
            // Keep the disk free: the fixed-size and raw outputs are GiB-sized files.
            remove_image(&w, &id, &arch_dir, p)?;
        }
    }

    // Compression.
    if selected("SECTIONS", "compress") {
        println!(
            "\nCompression of the qemu disk ({:.0} MiB); median of {RUNS} runs, alternating\n",
            qsize as f64 / (1 << 20) as f64
        );
        println!(
            "| compressor | cosa-extend compress --artifact qemu | peer | peer time | ratio | size |"
        );
        println!("| --- | --- | --- | --- | --- | --- |");
        for (c, peer_cmd) in [("xz", "xz -T0 -9 -c"), ("zstd", "zstd -T0 -10 -q -c")] {
            let peer = || {
                bash(
                    &format!("{peer_cmd} \"$1\" > \"$2\""),
                    &[qcow2.as_str(), out.as_str()],
                )
            };
            let ours = || extend(&["compress", "--compressor", c, "--artifact", "qemu"]);
            let undo = || extend(&["decompress", "--artifact", "qemu"]);
            let (mut o, mut p) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                flush()?;
                o.push(time(ours)?);
                let m = w.read_meta(&id, "x86_64")?;
                let size = m.images.get("qemu").and_then(|a| a.size).unwrap_or(0);
                undo()?;
                flush()?;
                p.push(time(peer)?);
                let psize = std::fs::metadata(&out)?.len();
                anyhow::ensure!(
                    size.abs_diff(psize) < 1 << 20,
                    "{c}: sizes differ: {size} vs {psize}"
                );
            }
            let (o, p) = (median(o), median(p));
            let psize = std::fs::metadata(&out)?.len();
            println!(
                "| {c} | {} | `{peer_cmd}` | {} | {:.2}× | {:.0} MiB |",
                secs(o),
                secs(p),
                o.as_secs_f64() / p.as_secs_f64(),
                psize as f64 / (1 << 20) as f64
            );
            let _ = std::fs::remove_file(&out);
        }
    }

    // All platforms: one call vs one call per platform.
    if !selected("SECTIONS", "all") {
        return Ok(());
    }
    let all: Vec<&str> = cosa::extend::platforms::names();
    flush()?;
    let one = time(|| extend(&["--platform", "all", "--force"]))?;
    flush()?;
    let each = time(|| {
        for p in &all {
            extend(&["--platform", p, "--force"])?;
        }
        Ok(())
    })?;
    println!(
        "\nEvery platform of the build ({} platforms, {} files)\n",
        all.len(),
        all.len() + 3
    );
    println!("| operation | time | ratio |");
    println!("| --- | --- | --- |");
    println!(
        "| one call per platform (`--platform P --force`, {} calls) | {} | 1.00× |",
        all.len(),
        secs(each)
    );
    println!(
        "| one call (`--platform all --force`) | {} | {:.2}× |",
        secs(one),
        one.as_secs_f64() / each.as_secs_f64()
    );
    Ok(())
}

/// Drop a derived image (file and meta.json entry) to free the disk.
fn remove_image(
    w: &cosa::workdir::Workdir,
    id: &str,
    arch_dir: &Utf8Path,
    key: &str,
) -> Result<()> {
    let lock = w.lock()?;
    let mut m = w.read_meta(id, "x86_64")?;
    if let Some(a) = m.images.shift_remove(key) {
        let _ = std::fs::remove_file(arch_dir.join(&a.path));
    }
    w.write_meta(&m, "x86_64", &lock)
}
