//! cosa-image on the example OS: builds made by cosa-compose, images checked with the
//! filesystem and partitioning tools, and booted under QEMU TCG with SeaBIOS and OVMF.
//!
//! Work directories live in /var/tmp (disk images are hundreds of MB, sparse).
//! The non-root test needs root to create its user; run as anyone else it prints a
//! notice and returns.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use crate::common::{Run, bin, run, utf8};
use crate::example;
use cosa::image::gpt;
use cosa::image::layout::{self, BOOT_FS_UUID, DISK_GUID, Layout, MIB, ROOT_FS_UUID, types};
use cosa::workdir::Workdir;

const ARCH: &str = "x86_64";
const BOOTED: &str = "COSA-EXAMPLE-OS-BOOTED";
const FAILED: &str = "COSA-EXAMPLE-OS-FAILED";
/// Longest a boot may take before the test kills QEMU (TCG on a busy 2-core runner).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const TEST_USER: &str = "cosa-test";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A work directory in /var/tmp holding one build of the example OS.
struct Fx {
    _td: tempfile::TempDir,
    root: Utf8PathBuf,
    wd: Workdir,
    id: String,
}

/// How to change the example config before composing.
#[derive(Default)]
struct BuildOpts {
    /// Replace src/config/image.yaml (None: keep the example's).
    image_yaml: Option<&'static str>,
    /// Compose without any image.yaml (the commit then has no image.json).
    no_image_yaml: bool,
    /// Add a file of this many zero bytes (sparse in the config) to the tree.
    big_file: Option<u64>,
}

/// Make a work directory with one build of the example OS, as a CI job would:
/// the example repo, `init-workdir.sh`, then `cosa-compose`. The build holds the
/// commit in tmp/repo and its `images.ostree` tar.
fn make_test_build(o: &BuildOpts) -> Result<Fx> {
    let td = tempfile::Builder::new()
        .prefix("cosa-image-test.")
        .tempdir_in("/var/tmp")?;
    let root = utf8(td.path())?;
    let repo = example::repo(&[])?;
    example::init_workdir(&root, &format!("file://{repo}"))?;
    let cfg = root.join("src/config");
    if let Some(y) = o.image_yaml {
        std::fs::write(cfg.join("image.yaml"), y)?;
    }
    if o.no_image_yaml {
        std::fs::remove_file(cfg.join("image.yaml"))?;
    }
    if let Some(n) = o.big_file {
        let f = std::fs::File::create(cfg.join("big.img"))?;
        f.set_len(n)?;
        let m = cfg.join("manifest.yaml");
        let text = std::fs::read_to_string(&m)?;
        let text = text.replace(
            "add-files:\n",
            "add-files:\n  - [\"big.img\", \"/usr/share/example/big.img\"]\n",
        );
        std::fs::write(&m, text)?;
    }
    let r = run(bin("cosa-compose").arg("--workdir").arg(root.as_str()))?;
    ensure!(r.code == 0, "cosa-compose failed:\n{}", r.stderr);
    let wd = Workdir::open(root.clone())?;
    let id = wd.latest_id()?.context("compose made no build")?;
    Ok(Fx {
        _td: td,
        root,
        wd,
        id,
    })
}

impl Fx {
    fn arch_dir(&self) -> Result<Utf8PathBuf> {
        self.wd.build_arch_dir(&self.id, ARCH)
    }

    fn image(&self, args: &[&str]) -> Result<Run> {
        run(bin("cosa-image")
            .arg("--workdir")
            .arg(self.root.as_str())
            .args(args))
    }

    fn image_ok(&self, args: &[&str]) -> Result<Run> {
        let r = self.image(args)?;
        ensure!(r.code == 0, "cosa-image {args:?} failed:\n{}", r.stderr);
        Ok(r)
    }

    fn meta(&self) -> Result<Value> {
        Ok(serde_json::from_slice(&std::fs::read(
            self.wd.meta_path(&self.id, ARCH)?,
        )?)?)
    }

    /// The path of a registered image, checked against its meta.json entry.
    fn checked_image(&self, platform: &str) -> Result<Utf8PathBuf> {
        let m = self.meta()?;
        assert_eq!(
            crate::schema::schema_errors(&m)?,
            Vec::<String>::new(),
            "meta.json does not validate"
        );
        let img = &m["images"][platform];
        let name = img["path"].as_str().context("no images.<platform>.path")?;
        let ext = if platform == "qemu" { "qcow2" } else { "raw" };
        assert_eq!(
            name,
            format!("example-os-{}-{platform}.{ARCH}.{ext}", self.id)
        );
        let p = self.arch_dir()?.join(name);
        let (sum, size) = cosa::image::commit::sha256_file(&p)?;
        assert_eq!(img["sha256"].as_str(), Some(sum.as_str()), "{p}: sha256");
        assert_eq!(img["size"].as_u64(), Some(size), "{p}: size");
        Ok(p)
    }

    /// File names in the arch directory (temporary files included).
    fn listing(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(self.arch_dir()?)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(v)
    }

    /// Nothing left in tmp/ but the repository.
    fn assert_no_scratch(&self) -> Result<()> {
        let left: Vec<String> = std::fs::read_dir(self.wd.tmp_dir())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|n| n.starts_with(cosa::fsutil::TMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "scratch left in tmp/: {left:?}");
        Ok(())
    }

    /// `cosa-image run` (optionally as another user) until the example initramfs prints
    /// its marker; returns the marker line.
    fn boot(&self, args: &[&str], user: Option<&str>) -> Result<String> {
        let mut c = match user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", env!("CARGO_BIN_EXE_cosa-image")]);
                c
            }
            None => bin("cosa-image"),
        };
        c.arg("--workdir")
            .arg(self.root.as_str())
            .arg("run")
            .args(["--accel", "tcg", "--no-reboot", "--memory", "1024"])
            .args(args)
            .args(["--", "-nic", "none"]);
        boot_marker(c, &format!("{args:?}"))
    }
}

/// Run a booting command; wait for the marker (or the failure line), then for QEMU to
/// exit; kill everything after [`BOOT_TIMEOUT`]. Returns the marker line.
fn boot_marker(mut c: Command, what: &str) -> Result<String> {
    use std::os::unix::process::CommandExt;
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let t0 = Instant::now();
    let mut child = c.spawn().context("spawning cosa-image run")?;
    let pgid = rustix::process::Pid::from_child(&child);
    let kill = || {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    };
    let out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            let s = String::from_utf8_lossy(&line).replace('\r', "");
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut log = Vec::new();
    let mut marker = None;
    while marker.is_none() {
        let left = BOOT_TIMEOUT.saturating_sub(t0.elapsed());
        match rx.recv_timeout(left) {
            Ok(l) => {
                if l.contains(BOOTED) || l.contains(FAILED) {
                    marker = Some(l.trim().to_string());
                }
                log.push(l);
            }
            Err(_) => break,
        }
    }
    // The guest powers off after the marker; give QEMU time to exit on its own.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline || marker.is_none() {
            kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = stderr.join().unwrap_or_default();
    let tail: Vec<&String> = log
        .iter()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let Some(m) = marker else {
        bail!(
            "{what}: no boot marker within {} s; stderr:\n{stderr}\nconsole (last lines):\n{}",
            BOOT_TIMEOUT.as_secs(),
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    };
    eprintln!(
        "boot {what}: marker after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    ensure!(
        status.is_some_and(|s| s.success()),
        "{what}: cosa-image run did not exit cleanly ({status:?}); stderr:\n{stderr}"
    );
    Ok(m)
}

fn expected_marker(id: &str, platform: &str) -> String {
    format!("{BOOTED} version={id} id=example-os platform={platform}")
}

fn cmd_out(c: &mut Command) -> Result<(bool, String)> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    Ok((o.status.success(), s))
}

/// `blkid -p` of the filesystem at `offset`: (TYPE, LABEL, UUID).
fn blkid(disk: &Utf8Path, offset: u64) -> Result<(String, String, String)> {
    let (ok, out) = cmd_out(
        Command::new("blkid")
            .args(["-p", "-o", "export", "-O", &offset.to_string()])
            .arg(disk),
    )?;
    ensure!(ok, "blkid at {offset}: {out}");
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    Ok((get("TYPE"), get("LABEL"), get("UUID")))
}

/// Copy `len` bytes at `offset` of `src` into a new file (for tools without offsets).
fn extract(src: &Utf8Path, offset: u64, len: u64, dst: &Utf8Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(src)?;
    let out = std::fs::File::create(dst)?;
    out.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut p = 0;
    while p < len {
        let n = ((len - p) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], offset + p)?;
        if buf[..n].iter().any(|b| *b != 0) {
            out.write_all_at(&buf[..n], p)?;
        }
        p += n as u64;
    }
    Ok(())
}

/// Check a raw disk: partition table (coreos-assembler's layout, disk GUID), every
/// filesystem clean (e2fsck -fn, fsck.fat -n) with coreos-assembler's labels and UUIDs.
fn check_disk(disk: &Utf8Path, sector: u64, scratch: &Utf8Path) -> Result<()> {
    let t = gpt::read(disk, sector)?;
    assert_eq!(t.disk_guid, DISK_GUID.to_uppercase());
    let names: Vec<&str> = t.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["BIOS-BOOT", "EFI-SYSTEM", "boot", "root"]);
    let tys: Vec<&str> = t.parts.iter().map(|p| p.type_guid.as_str()).collect();
    assert_eq!(
        tys,
        [
            types::BIOS_BOOT,
            types::ESP,
            types::XBOOTLDR,
            types::ROOT_X86_64
        ]
    );
    let off = |i: usize| t.parts[i].first_lba * sector;
    let len = |i: usize| (t.parts[i].last_lba + 1 - t.parts[i].first_lba) * sector;
    assert_eq!((off(0), len(0)), (MIB, MIB));
    assert_eq!((off(1), len(1)), (2 * MIB, 127 * MIB));
    assert_eq!((off(2), len(2)), (129 * MIB, 384 * MIB));
    assert_eq!(off(3), 513 * MIB);
    if sector == 512 {
        let (ok, out) = cmd_out(Command::new("sfdisk").arg("--json").arg(disk))?;
        ensure!(ok, "sfdisk --json: {out}");
        let j: Value = serde_json::from_str(&out)?;
        let pt = &j["partitiontable"];
        assert_eq!(pt["label"], "gpt");
        assert_eq!(pt["id"], DISK_GUID.to_uppercase());
        let parts = pt["partitions"].as_array().context("partitions")?;
        let got: Vec<(u64, u64, String)> = parts
            .iter()
            .map(|p| {
                (
                    p["start"].as_u64().unwrap_or(0),
                    p["size"].as_u64().unwrap_or(0),
                    p["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        assert_eq!(got[0], (2048, 2048, "BIOS-BOOT".to_string()));
        assert_eq!(got[1], (4096, 260096, "EFI-SYSTEM".to_string()));
        assert_eq!(got[2], (264192, 786432, "boot".to_string()));
        assert_eq!(got[3].0, 1050624);
        assert_eq!(got[3].2, "root");
        let (ok, out) = cmd_out(Command::new("sgdisk").arg("-v").arg(disk))?;
        assert!(ok && out.contains("No problems found"), "sgdisk -v: {out}");
    } else {
        let (ok, out) = cmd_out(Command::new("fdisk").args(["-b", "4096", "-l"]).arg(disk))?;
        assert!(ok, "fdisk: {out}");
        assert!(out.contains("Disklabel type: gpt"), "{out}");
        assert!(
            out.contains("Sector size (logical/physical): 4096 bytes"),
            "{out}"
        );
        assert!(out.contains("Linux root (x86-64)"), "{out}");
    }
    for (i, label, uuid) in [(2, "boot", BOOT_FS_UUID), (3, "root", ROOT_FS_UUID)] {
        let (ok, out) = cmd_out(
            Command::new("e2fsck")
                .arg("-fn")
                .arg(format!("{disk}?offset={}", off(i))),
        )?;
        assert!(ok, "e2fsck -fn {label}: {out}");
        assert_eq!(
            blkid(disk, off(i))?,
            ("ext4".to_string(), label.to_string(), uuid.to_string())
        );
    }
    let esp = scratch.join(format!("esp-{sector}.img"));
    extract(disk, off(1), len(1), &esp)?;
    let (ok, out) = cmd_out(Command::new("fsck.fat").arg("-n").arg(&esp))?;
    assert!(ok, "fsck.fat -n: {out}");
    let (ty, label, uuid) = blkid(disk, off(1))?;
    assert_eq!(
        (ty.as_str(), label.as_str(), uuid.as_str()),
        ("vfat", "EFI-SYSTEM", "7B77-95E7")
    );
    let (ok, out) = cmd_out(
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .arg("::/EFI/BOOT"),
    )?;
    assert!(ok && out.contains("BOOTX64"), "mdir: {out}");
    std::fs::remove_file(&esp)?;
    // The deployment is owned by root inside the filesystem (whoever built it).
    let (ok, out) = cmd_out(
        Command::new("debugfs")
            .arg("-R")
            .arg("stat /ostree/deploy")
            .arg(format!("{disk}?offset={}", off(3))),
    )?;
    assert!(
        ok && out.contains("User:     0   Group:     0"),
        "debugfs: {out}"
    );
    // The deployed repository's config is CoreOS's, without our build-time settings.
    let (ok, out) = cmd_out(
        Command::new("debugfs")
            .arg("-R")
            .arg("cat /ostree/repo/config")
            .arg(format!("{disk}?offset={}", off(3))),
    )?;
    assert!(
        ok && out.contains("bootloader=none") && out.contains("readonly=true"),
        "{out}"
    );
    assert!(!out.contains("fsync"), "{out}");
    Ok(())
}

#[test]
fn qemu_image_boots_with_seabios_and_ovmf() -> Result<()> {
    let fx = make_test_build(&BuildOpts::default())?;
    let r = fx.image_ok(&[])?;
    let qcow2 = fx.checked_image("qemu")?;
    assert_eq!(r.stdout.trim(), format!("qemu={qcow2}"));
    // qcow2 v3 (compat 1.1), the example's `size: 3` GiB, and sound inside.
    let (ok, out) = cmd_out(
        Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&qcow2),
    )?;
    ensure!(ok, "qemu-img info: {out}");
    let info: Value = serde_json::from_str(&out)?;
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
    assert_eq!(info["virtual-size"].as_u64(), Some(3 << 30));
    let (ok, out) = cmd_out(Command::new("qemu-img").arg("check").arg(&qcow2))?;
    assert!(ok, "qemu-img check: {out}");
    let raw = fx.root.join("qemu-as-raw.img");
    let (ok, out) = cmd_out(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&qcow2)
            .arg(&raw),
    )?;
    ensure!(ok, "qemu-img convert: {out}");
    check_disk(&raw, 512, &fx.root)?;
    std::fs::remove_file(&raw)?;
    fx.assert_no_scratch()?;

    let want = expected_marker(&fx.id, "qemu");
    assert_eq!(fx.boot(&[], None)?, want, "SeaBIOS");
    assert_eq!(fx.boot(&["--uefi"], None)?, want, "OVMF");

    // Already there: skipped, untouched. --force: rebuilt and re-registered.
    let before = std::fs::metadata(&qcow2)?.modified()?;
    let r = fx.image_ok(&["--platform", "qemu"])?;
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert_eq!(r.stdout, "");
    assert_eq!(std::fs::metadata(&qcow2)?.modified()?, before);
    let r = fx.image_ok(&["--platform", "qemu", "--force"])?;
    assert!(r.stdout.contains("qemu="), "{}", r.stdout);
    assert_ne!(std::fs::metadata(&qcow2)?.modified()?, before);
    fx.checked_image("qemu")?;
    assert!(
        !fx.listing()?
            .iter()
            .any(|n| n.starts_with(cosa::fsutil::TMP_PREFIX)),
        "{:?}",
        fx.listing()?
    );
    Ok(())
}

#[test]
fn metal_images_boot_and_are_sound() -> Result<()> {
    // rootfs: xfs is asked for; ext4 is made, and said so.
    let fx = make_test_build(&BuildOpts {
        image_yaml: Some("size: 3\nrootfs: xfs\nextra-kargs: [console=ttyS0, panic=-1]\n"),
        ..Default::default()
    })?;
    // A CI job that fetched the build has no tmp/repo: the commit comes from the tar.
    std::fs::remove_dir_all(fx.wd.repo_dir())?;
    let r = fx.image_ok(&["--platform", "metal,metal4k"])?;
    assert!(r.stderr.contains("xfs requested"), "{}", r.stderr);
    assert!(r.stderr.contains("importing commit"), "{}", r.stderr);
    let (ok, out) = cmd_out(
        Command::new("ostree")
            .arg(format!("--repo={}", fx.wd.repo_dir()))
            .args(["rev-parse", &format!("cosa/builds/{}/{ARCH}", fx.id)]),
    )?;
    assert!(ok, "ref after import: {out}");
    assert_eq!(
        out.trim(),
        fx.meta()?["ostree-commit"].as_str().unwrap_or("")
    );

    let metal = fx.checked_image("metal")?;
    let metal4k = fx.checked_image("metal4k")?;
    check_disk(&metal, 512, &fx.root)?;
    check_disk(&metal4k, 4096, &fx.root)?;
    // Sized to the tree like coreos-assembler's metal: well under the qemu image's 3 GiB.
    let len = std::fs::metadata(&metal)?.len();
    assert!(
        len > 513 * MIB && len < 1024 * MIB,
        "metal disk is {len} bytes"
    );
    assert!(
        cosa::image::disk::allocated(&metal)? < len / 4,
        "metal image is not sparse"
    );
    fx.assert_no_scratch()?;

    let want = expected_marker(&fx.id, "metal");
    assert_eq!(
        fx.boot(&["--platform", "metal"], None)?,
        want,
        "metal, SeaBIOS"
    );
    assert_eq!(
        fx.boot(&["--platform", "metal4k", "--uefi"], None)?,
        want,
        "metal4k, OVMF, 4096-byte sectors"
    );
    Ok(())
}

/// Create the unprivileged test user if it does not exist.
fn ensure_test_user() -> Result<()> {
    let (ok, _) = cmd_out(Command::new("id").arg(TEST_USER))?;
    if !ok {
        let (ok, out) = cmd_out(Command::new("useradd").args(["-m", TEST_USER]))?;
        // Another test may have created it meanwhile.
        let (exists, _) = cmd_out(Command::new("id").arg(TEST_USER))?;
        ensure!(ok || exists, "useradd {TEST_USER}: {out}");
    }
    Ok(())
}

#[test]
fn non_root_user_builds_and_boots() -> Result<()> {
    if !is_root() {
        eprintln!(
            "notice: non_root_user_builds_and_boots needs root to create the user {TEST_USER}; \
             skipped (the other cosa-image tests ran as this non-root user)"
        );
        return Ok(());
    }
    ensure_test_user()?;
    let fx = make_test_build(&BuildOpts::default())?;
    let (ok, out) = cmd_out(
        Command::new("chown")
            .args(["-R", &format!("{TEST_USER}:{TEST_USER}")])
            .arg(&fx.root),
    )?;
    ensure!(ok, "chown: {out}");
    let mut c = Command::new("runuser");
    c.args(["-u", TEST_USER, "--", env!("CARGO_BIN_EXE_cosa-image")])
        .arg("--workdir")
        .arg(fx.root.as_str())
        .args(["--platform", "qemu,metal"])
        .env_remove("RUST_LOG")
        .env_remove("GITHUB_ACTIONS")
        .env_remove("GITHUB_OUTPUT");
    let r = run(&mut c)?;
    ensure!(
        r.code == 0,
        "cosa-image as {TEST_USER} failed:\n{}",
        r.stderr
    );
    let metal = fx.checked_image("metal")?;
    fx.checked_image("qemu")?;
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(&metal)?.uid();
    assert_ne!(uid, 0, "the image should belong to {TEST_USER}");
    check_disk(&metal, 512, &fx.root)?;
    fx.assert_no_scratch()?;
    assert_eq!(
        fx.boot(&["--platform", "metal", "--uefi"], Some(TEST_USER))?,
        expected_marker(&fx.id, "metal"),
        "metal, OVMF, as {TEST_USER}"
    );
    assert_eq!(
        fx.boot(&[], Some(TEST_USER))?,
        expected_marker(&fx.id, "qemu"),
        "qemu, SeaBIOS, as {TEST_USER}"
    );
    Ok(())
}

/// Run cosa-image expecting a failure: exit 1, one `error:` line containing `want`,
/// no image and no temporary file in the arch directory, meta.json unchanged.
fn assert_clean_failure(fx: &Fx, args: &[&str], want: &[&str]) -> Result<String> {
    let meta = std::fs::read(fx.wd.meta_path(&fx.id, ARCH)?)?;
    let listing = fx.listing()?;
    let r = fx.image(args)?;
    assert_eq!(r.code, 1, "{args:?}: stderr:\n{}", r.stderr);
    let line = r.error_line();
    for w in want {
        assert!(line.contains(w), "{args:?}: {w:?} not in {line:?}");
    }
    assert_eq!(
        std::fs::read(fx.wd.meta_path(&fx.id, ARCH)?)?,
        meta,
        "meta.json changed"
    );
    assert_eq!(fx.listing()?, listing, "arch directory changed");
    fx.assert_no_scratch()?;
    Ok(line)
}

#[test]
fn bad_input_gives_one_error_line_and_writes_nothing() -> Result<()> {
    // A commit without image.json (no image.yaml at compose time).
    let fx = make_test_build(&BuildOpts {
        no_image_yaml: true,
        ..Default::default()
    })?;
    let y = fx.wd.config_dir().join("image.yaml");
    assert_clean_failure(
        &fx,
        &[],
        &["no image configuration", "image.yaml does not exist"],
    )?;
    // Such a build falls back to src/config/image.yaml: broken, it is named with its line.
    std::fs::write(&y, "size: 3\nbogus-key: 1\n")?;
    assert_clean_failure(
        &fx,
        &["--platform", "metal"],
        &[&format!("{y}:2:"), "bogus-key"],
    )?;
    std::fs::write(&y, "size: [\n")?;
    assert_clean_failure(&fx, &[], &[&format!("{y}:")])?;
    std::fs::write(&y, "include: nope.yaml\n")?;
    assert_clean_failure(&fx, &[], &["nope.yaml"])?;
    assert_clean_failure(&fx, &["--build", "9.9.9"], &["9.9.9"])?;
    // A build whose commit is neither in tmp/repo nor in its tar.
    let tar = fx.meta()?["images"]["ostree"]["path"]
        .as_str()
        .context("ostree path")?
        .to_string();
    let tar = fx.arch_dir()?.join(tar);
    let saved = fx.root.join("saved.tar");
    std::fs::rename(&tar, &saved)?;
    std::fs::remove_dir_all(fx.wd.repo_dir())?;
    let commit = fx.meta()?["ostree-commit"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_clean_failure(&fx, &[], &[&commit, "does not exist"])?;
    // A corrupt tar is refused by its sha256.
    std::fs::write(&tar, b"not a tar")?;
    assert_clean_failure(&fx, &[], &["sha256", "does not match"])?;
    // Usage errors exit 2.
    let r = fx.image(&["--platform", "aws"])?;
    assert_eq!(r.code, 2, "{}", r.stderr);
    Ok(())
}

#[test]
fn disk_too_small_states_the_size_needed() -> Result<()> {
    // 400 MiB of content cannot fit a 1 GiB disk with the other partitions.
    let fx = make_test_build(&BuildOpts {
        image_yaml: Some("size: 1\nextra-kargs: [console=ttyS0]\n"),
        big_file: Some(400 * MIB),
        ..Default::default()
    })?;
    let line = assert_clean_failure(
        &fx,
        &["--platform", "qemu"],
        &["too small", "needs at least"],
    )?;
    // The size needed, in MiB, is more than the 1 GiB asked for.
    let mib: u64 = line
        .split("at least ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .context("no size in the error")?;
    assert!(mib > 1024, "{line}");
    Ok(())
}

#[test]
fn no_free_space_fails_cleanly() -> Result<()> {
    if !is_root() {
        eprintln!("notice: no_free_space_fails_cleanly needs root (a small tmpfs); skipped");
        return Ok(());
    }
    let fx = make_test_build(&BuildOpts::default())?;
    let arch_dir = fx.arch_dir()?;
    // In a private mount namespace, put the arch directory on a 30 MiB tmpfs: the
    // build's files fit, a metal image does not.
    let script = format!(
        r#"set -e
A={a}
cp -a "$A" "$A.copy"
mount -t tmpfs -o size=30m cosa-test "$A"
cp -a "$A.copy/." "$A/"
rm -rf "$A.copy"
before=$(sha256sum < "$A/meta.json")
set +e
{bin} --workdir {w} --platform metal 2>"$A.err"
rc=$?
set -e
echo "rc=$rc"
echo "err=$(grep '^error:' "$A.err" | head -n 1)"
echo "errlines=$(grep -c '^error:' "$A.err")"
after=$(sha256sum < "$A/meta.json")
[ "$before" = "$after" ] && echo meta=same || echo meta=changed
echo "files=$(ls -A "$A" | tr '\n' ' ')"
rm -f "$A.err"
"#,
        a = arch_dir,
        bin = env!("CARGO_BIN_EXE_cosa-image"),
        w = fx.root
    );
    let (ok, out) = cmd_out(Command::new("unshare").args(["-m", "sh", "-c", &script]))?;
    ensure!(ok, "{out}");
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(get("rc"), "1", "{out}");
    assert_eq!(get("errlines"), "1", "{out}");
    assert!(get("err").contains("No space left on device"), "{out}");
    assert_eq!(get("meta"), "same", "{out}");
    let files = get("files");
    assert!(
        !files.contains("metal") && !files.contains(cosa::fsutil::TMP_PREFIX),
        "{out}"
    );
    fx.assert_no_scratch()?;
    Ok(())
}

#[test]
fn partition_tables_read_back_for_each_arch() -> Result<()> {
    let td = tempfile::Builder::new()
        .prefix("cosa-image-gpt.")
        .tempdir_in("/var/tmp")?;
    let dir = utf8(td.path())?;
    for (arch, sector) in [
        ("x86_64", 512),
        ("aarch64", 512),
        ("aarch64", 4096),
        ("x86_64", 4096),
    ] {
        let l = Layout::for_arch(arch)?;
        let size = 2048 * MIB;
        let placed = l.place(size)?;
        let p = dir.join(format!("{arch}-{sector}.img"));
        let f = cosa::image::disk::create_sparse(&p, size)?;
        gpt::write(&f, &p, size, sector, DISK_GUID, &placed)?;
        drop(f);
        let t = gpt::read(&p, sector)?;
        let names: Vec<&str> = t.parts.iter().map(|x| x.name.as_str()).collect();
        let first = if arch == "aarch64" {
            "reserved"
        } else {
            "BIOS-BOOT"
        };
        assert_eq!(
            names,
            [first, "EFI-SYSTEM", "boot", "root"],
            "{arch}/{sector}"
        );
        if sector == 512 {
            let (ok, out) = cmd_out(Command::new("sfdisk").arg("--json").arg(&p))?;
            ensure!(ok, "sfdisk: {out}");
            let j: Value = serde_json::from_str(&out)?;
            let parts = j["partitiontable"]["partitions"]
                .as_array()
                .context("parts")?;
            let got: Vec<(String, String, u64, u64)> = parts
                .iter()
                .map(|x| {
                    (
                        x["name"].as_str().unwrap_or("").to_string(),
                        x["type"].as_str().unwrap_or("").to_string(),
                        x["start"].as_u64().unwrap_or(0),
                        x["size"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            let root_type = if arch == "aarch64" {
                types::ROOT_AARCH64
            } else {
                types::ROOT_X86_64
            };
            let first_type = if arch == "aarch64" {
                types::LINUX_RESERVED
            } else {
                types::BIOS_BOOT
            };
            assert_eq!(
                got[0],
                (first.to_string(), first_type.to_string(), 2048, 2048)
            );
            assert_eq!(
                got[1],
                (
                    "EFI-SYSTEM".to_string(),
                    types::ESP.to_string(),
                    4096,
                    260096
                )
            );
            assert_eq!(
                got[2],
                (
                    "boot".to_string(),
                    types::XBOOTLDR.to_string(),
                    264192,
                    786432
                )
            );
            assert_eq!(
                (got[3].0.as_str(), got[3].1.as_str(), got[3].2),
                ("root", root_type, 1050624)
            );
            assert_eq!(
                got[3].3,
                (2047 - 513) * 2048,
                "root runs to 1 MiB before the end"
            );
            assert_eq!(j["partitiontable"]["id"], DISK_GUID.to_uppercase());
            let (ok, out) = cmd_out(Command::new("sgdisk").arg("-v").arg(&p))?;
            assert!(
                ok && out.contains("No problems found"),
                "sgdisk -v {arch}: {out}"
            );
        } else {
            let (ok, out) = cmd_out(Command::new("fdisk").args(["-b", "4096", "-l"]).arg(&p))?;
            assert!(ok, "{out}");
            assert!(
                out.contains("Disk identifier: 00000000-0000-4000-A000-000000000001"),
                "{out}"
            );
            // 1 MiB = 256 sectors of 4 KiB.
            let row = |n: u32| -> Vec<String> {
                out.lines()
                    .find(|l| l.starts_with(&format!("{p}{n} ")))
                    .map(|l| {
                        l.split_whitespace()
                            .skip(1)
                            .take(3)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            assert_eq!(row(1), ["256", "511", "256"], "{out}");
            assert_eq!(row(3), ["33024", "131327", "98304"], "{out}");
        }
    }
    assert_eq!(layout::NONROOT_MIB, 513);
    Ok(())
}
