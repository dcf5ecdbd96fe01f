//! cosa-extend on the example OS: every platform's file read back by an independent
//! tool (qemu-img, tar, an XML parser, the OCI layout walked by hand, debugfs on the
//! boot filesystem), derived disks and the live ISO booted under QEMU TCG (SeaBIOS
//! and OVMF), compress/decompress round trips (also after a kill), and bad input.
//!
//! One build of the example OS is composed per test run (a template) and copied for
//! each test; work directories live in /var/tmp.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use crate::common::{Run, bin, run, utf8};
use crate::example;
use cosa::workdir::Workdir;

const ARCH: &str = "x86_64";
const BOOTED: &str = "COSA-EXAMPLE-OS-BOOTED";
const FAILED: &str = "COSA-EXAMPLE-OS-FAILED";
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const MIB: u64 = 1 << 20;

/// image.yaml of the template: the example's, plus VMware settings to find in the OVF.
const IMAGE_YAML: &str = "size: 3\nbootfs: ext4\nrootfs: ext4\nextra-kargs: [console=ttyS0, panic=-1]\n\
vmware-hw-version: 17\nvmware-os-type: fedora64Guest\nvmware-secure-boot: false\n";

static TEMPLATE: OnceLock<Mutex<Option<(tempfile::TempDir, Utf8PathBuf)>>> = OnceLock::new();

/// A work directory (a copy of the template: one composed build, no images yet).
struct Fx {
    _td: tempfile::TempDir,
    root: Utf8PathBuf,
    wd: Workdir,
    id: String,
}

fn template() -> Result<Utf8PathBuf> {
    let m = TEMPLATE.get_or_init(|| Mutex::new(None));
    let mut g = m.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    if let Some((_, p)) = g.as_ref() {
        return Ok(p.clone());
    }
    let td = tempfile::Builder::new()
        .prefix("cosa-extend-template.")
        .tempdir_in("/var/tmp")?;
    let root = utf8(td.path())?.join("w");
    let repo = example::repo(&[])?;
    example::init_workdir(&root, &format!("file://{repo}"))?;
    std::fs::write(root.join("src/config/image.yaml"), IMAGE_YAML)?;
    let r = run(bin("cosa-compose").arg("--workdir").arg(root.as_str()))?;
    ensure!(r.code == 0, "cosa-compose failed:\n{}", r.stderr);
    *g = Some((td, root.clone()));
    Ok(root)
}

impl Fx {
    fn new() -> Result<Fx> {
        let t = template()?;
        let td = tempfile::Builder::new()
            .prefix("cosa-extend-test.")
            .tempdir_in("/var/tmp")?;
        let root = utf8(td.path())?.join("w");
        let o = Command::new("cp")
            .args(["-a", "--sparse=always", t.as_str(), root.as_str()])
            .output()?;
        ensure!(
            o.status.success(),
            "cp: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let wd = Workdir::open(root.clone())?;
        let id = wd.latest_id()?.context("no build")?;
        Ok(Fx {
            _td: td,
            root,
            wd,
            id,
        })
    }

    fn arch_dir(&self) -> Result<Utf8PathBuf> {
        self.wd.build_arch_dir(&self.id, ARCH)
    }

    fn extend(&self, args: &[&str]) -> Result<Run> {
        run(bin("cosa-extend")
            .arg("--workdir")
            .arg(self.root.as_str())
            .args(args))
    }

    fn extend_ok(&self, args: &[&str]) -> Result<Run> {
        let r = self.extend(args)?;
        ensure!(r.code == 0, "cosa-extend {args:?} failed:\n{}", r.stderr);
        Ok(r)
    }

    fn meta(&self) -> Result<Value> {
        Ok(serde_json::from_slice(&std::fs::read(
            self.wd.meta_path(&self.id, ARCH)?,
        )?)?)
    }

    /// meta.json valid against coreos-assembler's schema; every image's file has its
    /// sha256 and size.
    fn check_meta(&self) -> Result<Value> {
        let m = self.meta()?;
        assert_eq!(
            crate::schema::schema_errors(&m)?,
            Vec::<String>::new(),
            "meta.json does not validate"
        );
        for (k, img) in m["images"].as_object().context("images")? {
            let p = self.arch_dir()?.join(img["path"].as_str().context("path")?);
            let (sum, size) = cosa::fsutil::sha256_file(&p)?;
            assert_eq!(img["sha256"].as_str(), Some(sum.as_str()), "{k}: sha256");
            assert_eq!(img["size"].as_u64(), Some(size), "{k}: size");
        }
        Ok(m)
    }

    /// An image's path, checking its name and skip-compression.
    fn image(&self, key: &str, ext: &str, skip: bool) -> Result<Utf8PathBuf> {
        let m = self.meta()?;
        let img = &m["images"][key];
        let name = img["path"]
            .as_str()
            .with_context(|| format!("no images.{key}"))?;
        let want = if ext.is_empty() {
            format!("example-os-{}-{key}.{ARCH}", self.id)
        } else {
            format!("example-os-{}-{key}.{ARCH}.{ext}", self.id)
        };
        assert_eq!(name, want);
        assert_eq!(
            img["skip-compression"].as_bool().unwrap_or(false),
            skip,
            "{key}: skip-compression"
        );
        Ok(self.arch_dir()?.join(name))
    }

    fn listing(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(self.arch_dir()?)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(v)
    }

    fn assert_no_scratch(&self) -> Result<()> {
        for d in [self.wd.tmp_dir(), self.arch_dir()?] {
            let left: Vec<String> = std::fs::read_dir(&d)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|n| n.starts_with(cosa::fsutil::TMP_PREFIX))
                .collect();
            assert!(left.is_empty(), "temporary files left in {d}: {left:?}");
        }
        Ok(())
    }
}

fn cmd_out(c: &mut Command) -> Result<(bool, String)> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    Ok((o.status.success(), s))
}

fn must(c: &mut Command) -> Result<String> {
    let (ok, out) = cmd_out(c)?;
    ensure!(ok, "{c:?}: {out}");
    Ok(out)
}

/// `qemu-img info` (format given explicitly: a fixed VHD probes as raw).
fn qemu_info(path: &Utf8Path, format: &str) -> Result<Value> {
    let out = must(
        Command::new("qemu-img")
            .args(["info", "--output=json", "-f", format])
            .arg(path),
    )?;
    Ok(serde_json::from_str(&out)?)
}

fn node(path: &Utf8Path, format: &str) -> Value {
    serde_json::json!({"driver": format, "file": {"driver": "file", "filename": path.as_str()}})
}

fn slice(n: &Value, off: u64, len: u64) -> String {
    format!(
        "json:{}",
        serde_json::json!({"driver": "raw", "offset": off, "size": len, "file": n})
    )
}

/// The base layout: boot partition and end of the last partition (x86_64, cosa-image).
const BOOT_OFF: u64 = 129 * MIB;
const BOOT_LEN: u64 = 384 * MIB;

/// `qemu-img compare` of a byte range of two images.
fn same_range(a: &Value, b: &Value, off: u64, len: u64) -> Result<()> {
    must(Command::new("qemu-img").args(["compare", &slice(a, off, len), &slice(b, off, len)]))
        .map(|_| ())
        .with_context(|| format!("bytes {off}..{} differ", off + len))
}

/// Check a derived disk against the base: identical outside the boot partition (up to
/// `data_end` when the disk was grown), and the boot filesystem clean with the
/// platform's kernel arguments. Returns the BLS options line.
fn check_derived(
    disk: &Utf8Path,
    format: &str,
    base: &Utf8Path,
    platform: &str,
    scratch: &Utf8Path,
) -> Result<String> {
    let d = node(disk, format);
    let b = node(base, "qcow2");
    let base_size = qemu_info(base, "qcow2")?["virtual-size"]
        .as_u64()
        .context("size")?;
    let size = qemu_info(disk, format)?["virtual-size"]
        .as_u64()
        .context("size")?;
    let after = BOOT_OFF + BOOT_LEN;
    if size == base_size {
        same_range(&d, &b, 0, BOOT_OFF)?;
        same_range(&d, &b, after, size - after)?;
    } else {
        // A grown disk: a new GPT in the first MiB, the base's bytes up to its last
        // MiB (the base's backup GPT), zeros and the new backup GPT after.
        let out = must(Command::new("qemu-img").args([
            "compare",
            &slice(&d, 0, MIB),
            &slice(&b, 0, MIB),
        ]));
        assert!(
            out.is_err(),
            "{platform}: the grown disk has the base's GPT"
        );
        same_range(&d, &b, MIB, BOOT_OFF - MIB)?;
        same_range(&d, &b, after, base_size - MIB - after)?;
    }
    let bootfs = scratch.join(format!("{platform}-boot.img"));
    must(Command::new("qemu-img").args([
        "convert",
        "-O",
        "raw",
        &slice(&d, BOOT_OFF, BOOT_LEN),
        bootfs.as_str(),
    ]))?;
    must(Command::new("e2fsck").arg("-fn").arg(&bootfs))?;
    let entries = must(
        Command::new("debugfs")
            .args(["-R", "ls /loader/entries"])
            .arg(&bootfs),
    )?;
    let conf = entries
        .split_whitespace()
        .find(|w| w.ends_with(".conf"))
        .context("no BLS entry")?
        .to_string();
    let bls = must(
        Command::new("debugfs")
            .args(["-R", &format!("cat /loader/entries/{conf}")])
            .arg(&bootfs),
    )?;
    let options = bls
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .context("no options line")?
        .to_string();
    let want = format!("ignition.platform.id={platform}");
    assert_eq!(
        options
            .split_whitespace()
            .filter(|k| k.starts_with("ignition.platform.id="))
            .collect::<Vec<_>>(),
        [want.as_str()],
        "{platform}: {options}"
    );
    let grub = must(
        Command::new("debugfs")
            .args(["-R", "cat /grub2/grub.cfg"])
            .arg(&bootfs),
    )?;
    assert!(
        grub.contains(&format!("{want} ")) || grub.contains(&format!("{want}\n")),
        "{grub}"
    );
    assert!(!grub.contains("ignition.platform.id=qemu"), "{grub}");
    std::fs::remove_file(&bootfs)?;
    Ok(options)
}

/// Run QEMU until the example initramfs prints its marker; returns the marker line.
fn boot(args: &[String], what: &str) -> Result<String> {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("timeout");
    c.arg(BOOT_TIMEOUT.as_secs().to_string())
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let t0 = Instant::now();
    let mut child = c.spawn().context("spawning qemu")?;
    let pgid = rustix::process::Pid::from_child(&child);
    let out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send(String::from_utf8_lossy(&line).replace('\r', ""))
                .is_err()
            {
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
        match rx.recv_timeout(BOOT_TIMEOUT.saturating_sub(t0.elapsed())) {
            Ok(l) => {
                if l.contains(BOOTED) || l.contains(FAILED) {
                    marker = Some(l.trim().to_string());
                }
                log.push(l);
            }
            Err(_) => break,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline || marker.is_none() {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.wait();
    let stderr = stderr.join().unwrap_or_default();
    let Some(m) = marker else {
        let n = log.len().saturating_sub(40);
        bail!(
            "{what}: no marker; stderr:\n{stderr}\nconsole:\n{}",
            log[n..].join("\n")
        );
    };
    eprintln!(
        "boot {what}: marker after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(m)
}

fn ovmf_args(scratch: &Utf8Path) -> Result<Vec<String>> {
    match cosa::image::qemu::find_ovmf()? {
        cosa::image::qemu::Ovmf::Split { code, vars } => {
            let v = scratch.join(format!("vars-{}.fd", fastrand::u32(..)));
            std::fs::copy(&vars, &v)?;
            Ok(vec![
                "-drive".into(),
                format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={v}"),
            ])
        }
        cosa::image::qemu::Ovmf::Combined(p) => Ok(vec!["-bios".into(), p.to_string()]),
    }
}

fn marker(id: &str, platform: &str) -> String {
    format!("{BOOTED} version={id} id=example-os platform={platform}")
}

/// A tar member list (`tar -tf`).
fn tar_list(path: &Utf8Path) -> Result<Vec<String>> {
    Ok(must(Command::new("tar").arg("-tf").arg(path))?
        .lines()
        .map(str::to_string)
        .collect())
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn every_platform_in_one_call_read_back_and_booted() -> Result<()> {
    let fx = Fx::new()?;
    let t = fx.extend_ok(&["--platform", "all"])?;
    let scratch = utf8(fx._td.path())?;
    let m = fx.check_meta()?;
    let all: Vec<&str> = cosa::extend::platforms::names();
    for p in &all {
        let keys: Vec<String> = if *p == "live" {
            cosa::extend::platforms::LIVE_KEYS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            vec![p.to_string()]
        };
        for k in keys {
            assert!(m["images"].get(&k).is_some(), "no images.{k}");
            assert!(
                t.stdout.contains(&format!("{k}=")),
                "{k} not printed:\n{}",
                t.stdout
            );
        }
    }
    let base = fx.image("qemu", "qcow2", false)?;
    assert_eq!(qemu_info(&base, "qcow2")?["format"], "qcow2");

    // Disk formats: the format as qemu-img reads it, the bytes, the kernel arguments.
    for (p, ext, fmt, skip) in [
        ("aliyun", "qcow2", "qcow2", false),
        ("applehv", "raw", "raw", false),
        ("aws", "vmdk", "vmdk", false),
        ("azure", "vhd", "vpc", false),
        ("azurestack", "vhd", "vpc", false),
        ("digitalocean", "qcow2", "qcow2", false),
        ("exoscale", "qcow2", "qcow2", false),
        ("hetzner", "raw", "raw", false),
        ("hyperv", "vhdx", "vhdx", false),
        ("ibmcloud", "qcow2", "qcow2", false),
        ("nutanix", "qcow2", "qcow2", true),
        ("openstack", "qcow2", "qcow2", false),
        ("oraclecloud", "qcow2", "qcow2", false),
        ("proxmoxve", "qcow2", "qcow2", false),
        ("vultr", "raw", "raw", false),
    ] {
        let f = fx.image(p, ext, skip)?;
        let info = qemu_info(&f, fmt)?;
        assert_eq!(info["format"], fmt, "{p}");
        let want_size = if p == "ibmcloud" { 100 << 30 } else { 3 << 30 };
        assert_eq!(info["virtual-size"].as_u64(), Some(want_size), "{p}");
        let spec = info["format-specific"]["data"].clone();
        match fmt {
            "qcow2" => assert_eq!(spec["compat"], "1.1", "{p}"),
            "vmdk" => {
                assert_eq!(spec["create-type"], "streamOptimized", "{p}");
                let desc = must(Command::new("head").args(["-c", "2048"]).arg(&f))?;
                assert!(
                    desc.contains("ddb.adapterType = \"lsilogic\""),
                    "{p}: {desc}"
                );
            }
            "vpc" => {
                // A fixed VHD: the disk followed by a 512-byte footer.
                let len = std::fs::metadata(&f)?.len();
                assert_eq!(len, (3u64 << 30) + 512, "{p}");
                let mut footer = vec![0u8; 512];
                use std::os::unix::fs::FileExt;
                std::fs::File::open(&f)?.read_exact_at(&mut footer, len - 512)?;
                assert_eq!(&footer[..8], b"conectix", "{p}");
                assert_eq!(
                    u32::from_be_bytes([footer[60], footer[61], footer[62], footer[63]]),
                    2,
                    "{p}: disk type fixed"
                );
            }
            _ => {}
        }
        let options = check_derived(&f, fmt, &base, p, &scratch)?;
        if matches!(p, "aws" | "gcp" | "azure" | "openstack") {
            assert!(options.contains("console=ttyS0,115200n8"), "{p}: {options}");
        }
        // image.yaml's extra-kargs stay.
        assert!(
            options.starts_with("rw console=ttyS0 panic=-1 "),
            "{p}: {options}"
        );
    }
    // nutanix: compressed clusters make it smaller than the same disk uncompressed.
    let nut = std::fs::metadata(fx.image("nutanix", "qcow2", true)?)?.len();
    let plain = std::fs::metadata(fx.image("openstack", "qcow2", false)?)?.len();
    assert!(nut < plain, "nutanix {nut} >= openstack {plain}");

    // gcp: a gzip'd oldgnu tar holding one sparse disk.raw.
    let gcp = fx.image("gcp", "tar.gz", true)?;
    let listing = must(Command::new("tar").arg("-tvf").arg(&gcp))?;
    assert_eq!(tar_list(&gcp)?, ["disk.raw"], "{listing}");
    let mut header = vec![0u8; 512];
    let mut gz = Command::new("gzip")
        .args(["-dc"])
        .arg(&gcp)
        .stdout(Stdio::piped())
        .spawn()?;
    gz.stdout
        .as_mut()
        .context("stdout")?
        .read_exact(&mut header)?;
    let _ = gz.kill();
    let _ = gz.wait();
    assert_eq!(&header[..9], b"disk.raw\0");
    assert_eq!(header[156], b'S', "a GNU sparse member");
    assert_eq!(&header[257..265], b"ustar  \0", "oldgnu magic");
    let gdir = scratch.join("gcp");
    std::fs::create_dir(&gdir)?;
    must(
        Command::new("tar")
            .args(["-xSf"])
            .arg(&gcp)
            .arg("-C")
            .arg(&gdir),
    )?;
    let raw = gdir.join("disk.raw");
    let md = std::fs::metadata(&raw)?;
    assert_eq!(md.len(), 3 << 30);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&md) * 512 < 1 << 30,
        "disk.raw not sparse"
    );
    check_derived(&raw, "raw", &base, "gcp", &scratch)?;
    std::fs::remove_file(&raw)?;

    // OVAs: the descriptor first, parsed as XML, with image.yaml's VMware settings.
    for (p, system_type) in [("vmware", "vmx-17"), ("virtualbox", "virtualbox-2.2")] {
        let ova = fx.image(p, "ova", true)?;
        assert_eq!(tar_list(&ova)?, ["coreos.ovf", "disk.vmdk"], "{p}");
        let vlist = must(Command::new("tar").arg("-tvf").arg(&ova))?;
        let dir = scratch.join(p);
        std::fs::create_dir(&dir)?;
        must(Command::new("tar").arg("-xf").arg(&ova).arg("-C").arg(&dir))?;
        let text = std::fs::read_to_string(dir.join("coreos.ovf"))?;
        let doc = roxmltree::Document::parse(&text).with_context(|| format!("{p}: OVF"))?;
        let ovf = "http://schemas.dmtf.org/ovf/envelope/1";
        let find = |tag: (&str, &str)| doc.descendants().find(|n| n.has_tag_name(tag));
        let vmdk = dir.join("disk.vmdk");
        let vmdk_len = std::fs::metadata(&vmdk)?.len();
        let file = find((ovf, "File")).context("File")?;
        assert_eq!(file.attribute((ovf, "href")), Some("disk.vmdk"));
        assert_eq!(
            file.attribute((ovf, "size")),
            Some(vmdk_len.to_string().as_str()),
            "{vlist}"
        );
        let disk = find((ovf, "Disk")).context("Disk")?;
        assert_eq!(
            disk.attribute((ovf, "capacity")),
            Some((3u64 << 30).to_string().as_str())
        );
        let vssd = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";
        let st = find((vssd, "VirtualSystemType")).context("VirtualSystemType")?;
        assert_eq!(st.text(), Some(system_type));
        if p == "vmware" {
            let os = find((ovf, "OperatingSystemSection")).context("OS")?;
            assert_eq!(
                os.attribute(("http://www.vmware.com/schema/ovf", "osType")),
                Some("fedora64Guest")
            );
            // vmware-secure-boot: false in the template's image.yaml.
            assert!(!text.contains("secureBoot"), "{text}");
        }
        let keys: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name((ovf, "Property")))
            .filter_map(|n| n.attribute((ovf, "key")))
            .collect();
        assert!(keys.contains(&"guestinfo.ignition.config.data"), "{keys:?}");
        let info = qemu_info(&vmdk, "vmdk")?;
        assert_eq!(
            info["format-specific"]["data"]["create-type"],
            "streamOptimized"
        );
        check_derived(&vmdk, "vmdk", &base, p, &scratch)?;
    }

    // kubevirt: walk the OCI layout from index.json to the qcow2 in the layer.
    let oci = fx.image("kubevirt", "ociarchive", true)?;
    let odir = scratch.join("oci");
    std::fs::create_dir(&odir)?;
    must(
        Command::new("tar")
            .arg("-xf")
            .arg(&oci)
            .arg("-C")
            .arg(&odir),
    )?;
    let layout: Value = serde_json::from_slice(&std::fs::read(odir.join("oci-layout"))?)?;
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let blob = |digest: &str, size: u64| -> Result<Vec<u8>> {
        let hexd = digest.strip_prefix("sha256:").context("digest")?;
        let b = std::fs::read(odir.join("blobs/sha256").join(hexd))?;
        assert_eq!(sha256_hex(&b), hexd, "blob digest");
        assert_eq!(b.len() as u64, size, "blob size");
        Ok(b)
    };
    let index: Value = serde_json::from_slice(&std::fs::read(odir.join("index.json"))?)?;
    let md = &index["manifests"][0];
    assert_eq!(
        md["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let manifest: Value = serde_json::from_slice(&blob(
        md["digest"].as_str().context("digest")?,
        md["size"].as_u64().context("size")?,
    )?)?;
    let c = &manifest["config"];
    let config: Value = serde_json::from_slice(&blob(
        c["digest"].as_str().context("digest")?,
        c["size"].as_u64().context("size")?,
    )?)?;
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    let l = &manifest["layers"][0];
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));
    blob(
        l["digest"].as_str().context("digest")?,
        l["size"].as_u64().context("size")?,
    )?;
    assert_eq!(config["rootfs"]["diff_ids"][0], l["digest"]);
    let layer = odir.join("blobs/sha256").join(
        l["digest"]
            .as_str()
            .context("digest")?
            .trim_start_matches("sha256:"),
    );
    let members = must(Command::new("tar").arg("-tvf").arg(&layer))?;
    let qname = tar_list(&layer)?
        .into_iter()
        .find(|n| n.starts_with("disk/") && n.ends_with(".qcow2"))
        .with_context(|| format!("no disk/*.qcow2 in the layer:\n{members}"))?;
    assert!(members.contains("107/107"), "{members}");
    let ldir = scratch.join("layer");
    std::fs::create_dir(&ldir)?;
    must(
        Command::new("tar")
            .arg("-xf")
            .arg(&layer)
            .arg("-C")
            .arg(&ldir),
    )?;
    let q = ldir.join(&qname);
    assert_eq!(qemu_info(&q, "qcow2")?["format"], "qcow2");
    check_derived(&q, "qcow2", &base, "kubevirt", &scratch)?;

    // Native disks and the live files are registered with their names.
    fx.image("metal", "raw", false)?;
    fx.image("metal4k", "raw", false)?;
    fx.image("live-iso", "iso", true)?;
    fx.image("live-kernel", "", true)?;
    fx.image("live-initramfs", "img", true)?;
    fx.image("live-rootfs", "img", true)?;

    // Derived disks boot: aws (VMDK) with SeaBIOS, azure (fixed VHD) with OVMF.
    let aws = fx.image("aws", "vmdk", false)?;
    let got = boot(
        &[
            "-snapshot".into(),
            "-drive".into(),
            format!("file={aws},format=vmdk,if=virtio"),
        ],
        "aws (SeaBIOS)",
    )?;
    assert_eq!(got, marker(&fx.id, "aws"));
    let azure = fx.image("azure", "vhd", false)?;
    let mut a = ovmf_args(&scratch)?;
    a.extend([
        "-snapshot".into(),
        "-drive".into(),
        format!("file={azure},format=vpc,if=virtio"),
    ]);
    assert_eq!(boot(&a, "azure (OVMF)")?, marker(&fx.id, "azure"));

    // Everything is there: a second call makes nothing and changes nothing.
    let before = std::fs::read(fx.wd.meta_path(&fx.id, ARCH)?)?;
    let r = fx.extend_ok(&["--platform", "all"])?;
    assert_eq!(r.stdout, "");
    assert_eq!(std::fs::read(fx.wd.meta_path(&fx.id, ARCH)?)?, before);
    // --force remakes one.
    fx.extend_ok(&["--platform", "hetzner", "--force"])?;
    fx.check_meta()?;
    fx.assert_no_scratch()?;
    Ok(())
}

#[test]
fn live_iso_boots_with_seabios_and_ovmf_and_pxe() -> Result<()> {
    let fx = Fx::new()?;
    let r = fx.extend_ok(&["--platform", "live"])?;
    for k in cosa::extend::platforms::LIVE_KEYS {
        assert!(r.stdout.contains(&format!("{k}=")), "{}", r.stdout);
    }
    let m = fx.check_meta()?;
    assert!(m["images"].get("qemu").is_none(), "live needs no qemu disk");
    let scratch = utf8(fx._td.path())?;
    let iso = fx.image("live-iso", "iso", true)?;
    let kernel = fx.image("live-kernel", "", true)?;
    let initramfs = fx.image("live-initramfs", "img", true)?;
    let rootfs = fx.image("live-rootfs", "img", true)?;
    // The volume ID is what coreos.liveiso= names.
    let label = cosa::extend::live::iso_label("example-os", &fx.id);
    let pvd = must(
        Command::new("xorriso")
            .args(["-indev"])
            .arg(&iso)
            .args(["-pvd_info"]),
    )?;
    assert!(pvd.contains(&format!("Volume Id    : {label}")), "{pvd}");
    let cfg = must(
        Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(&iso)
            .args(["-extract", "/boot/grub2/grub.cfg"])
            .arg(scratch.join("grub.cfg")),
    )
    .and_then(|_| Ok(std::fs::read_to_string(scratch.join("grub.cfg"))?))?;
    assert!(cfg.contains(&format!("coreos.liveiso={label} ")), "{cfg}");
    assert!(
        cfg.contains("cosa.live-rootfs=/images/pxeboot/rootfs.img"),
        "{cfg}"
    );
    // live-rootfs: CoreOS's format, a cpio holding root.squashfs.
    let list = must(
        Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::fs::File::open(&rootfs)?),
    )?;
    assert_eq!(list.trim(), "root.squashfs");
    let want = marker(&fx.id, "metal");
    let iso_arg = |extra: Vec<String>| {
        let mut v = extra;
        v.extend(["-cdrom".to_string(), iso.to_string()]);
        v
    };
    assert_eq!(boot(&iso_arg(vec![]), "live ISO (SeaBIOS)")?, want);
    assert_eq!(
        boot(&iso_arg(ovmf_args(&scratch)?), "live ISO (OVMF)")?,
        want
    );
    // The ISO written to a disk (hybrid MBR) boots too.
    assert_eq!(
        boot(
            &[
                "-snapshot".into(),
                "-drive".into(),
                format!("file={iso},format=raw,if=virtio"),
            ],
            "live ISO as a disk (SeaBIOS)"
        )?,
        want
    );
    // PXE: initramfs with the rootfs appended.
    let pxe = scratch.join("pxe.img");
    // As a boot loader loads a second initrd: at a 4-byte boundary (the kernel only
    // takes an uncompressed cpio that starts 4-byte aligned after a compressed one).
    let mut data = std::fs::read(&initramfs)?;
    data.resize(data.len().next_multiple_of(4), 0);
    data.extend(std::fs::read(&rootfs)?);
    std::fs::write(&pxe, data)?;
    let got = boot(
        &[
            "-kernel".into(),
            kernel.to_string(),
            "-initrd".into(),
            pxe.to_string(),
            "-append".into(),
            "console=ttyS0 panic=-1 ignition.platform.id=metal".into(),
        ],
        "PXE",
    )?;
    assert_eq!(got, want);
    fx.assert_no_scratch()?;
    Ok(())
}

/// Kill a running compress once `key` is compressed, then rerun: it finishes and the
/// build is consistent; decompress gives back the same bytes.
#[test]
fn compress_survives_a_kill_and_round_trips() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let fx = Fx::new()?;
    fx.extend_ok(&["--platform", "qemu,metal,aws,gcp"])?;
    let before = fx.check_meta()?;
    let sums = |m: &Value| -> Result<Vec<(String, String)>> {
        Ok(m["images"]
            .as_object()
            .context("images")?
            .iter()
            .map(|(k, v)| {
                let s = v
                    .get("uncompressed-sha256")
                    .or(v.get("sha256"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                (k.clone(), s)
            })
            .collect())
    };
    let want = sums(&before)?;

    let mut c = bin("cosa-extend");
    c.arg("--workdir")
        .arg(fx.root.as_str())
        .args(["compress", "--compressor", "xz"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = c.spawn()?;
    let pgid = rustix::process::Pid::from_child(&child);
    let t0 = Instant::now();
    let killed_midway;
    loop {
        if let Some(st) = child.try_wait()? {
            bail!("compress ended ({st}) before it could be interrupted");
        }
        let m = fx.meta()?;
        if m["images"]["qemu"].get("uncompressed-sha256").is_some() {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            let _ = child.wait();
            killed_midway = fx.meta()?["images"]["metal"]
                .get("uncompressed-sha256")
                .is_none();
            break;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(600),
            "compress did not progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(killed_midway, "the kill came after metal was compressed");
    // Interrupted: meta.json still valid and true to the files.
    fx.check_meta()?;
    let r = fx.extend(&["compress", "--compressor", "xz"])?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = fx.check_meta()?;
    for (k, p) in [
        ("qemu", "qcow2.xz"),
        ("metal", "raw.xz"),
        ("aws", "vmdk.xz"),
    ] {
        fx.image(k, p, false)?;
        assert!(m["images"][k].get("uncompressed-size").is_some(), "{k}");
    }
    // skip-compression and the OSTree archive are left alone.
    fx.image("gcp", "tar.gz", true)?;
    assert!(
        m["images"]["ostree"]["path"]
            .as_str()
            .unwrap_or("")
            .ends_with(".tar")
    );
    assert_eq!(sums(&m)?, want);
    // Only the compressed files are left.
    let names = fx.listing()?;
    for k in ["qemu.x86_64.qcow2", "metal.x86_64.raw", "aws.x86_64.vmdk"] {
        assert!(!names.iter().any(|n| n.ends_with(k)), "{k} left: {names:?}");
    }
    fx.assert_no_scratch()?;
    // A second compress has nothing to do.
    let r = fx.extend(&["compress"])?;
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{}", r.stderr);

    fx.extend_ok(&["decompress"])?;
    let back = fx.check_meta()?;
    assert_eq!(sums(&back)?, want);
    for (k, v) in back["images"].as_object().context("images")? {
        assert!(v.get("uncompressed-sha256").is_none(), "{k}");
        assert_eq!(v["sha256"], before["images"][k]["sha256"], "{k}");
        assert_eq!(v["path"], before["images"][k]["path"], "{k}");
    }
    // gzip and zstd, one image each.
    for (c, ext) in [("gzip", "qcow2.gz"), ("zstd", "qcow2.zst")] {
        fx.extend_ok(&["compress", "--compressor", c, "--artifact", "qemu"])?;
        fx.check_meta()?;
        fx.image("qemu", ext, false)?;
        assert!(
            fx.image("aws", "vmdk", false).is_ok(),
            "--artifact qemu touched aws"
        );
        fx.extend_ok(&["uncompress", "--artifact", "qemu"])?;
        let m = fx.check_meta()?;
        assert_eq!(
            m["images"]["qemu"]["sha256"],
            before["images"]["qemu"]["sha256"]
        );
    }
    // A platform derived from a compressed base works (the base is decompressed on the side).
    fx.extend_ok(&["compress", "--compressor", "zstd", "--artifact", "qemu"])?;
    fx.extend_ok(&["--platform", "openstack"])?;
    fx.check_meta()?;
    fx.assert_no_scratch()?;
    Ok(())
}

/// A failure: exit 1, one `error:` line containing `want`, meta.json and the build
/// directory unchanged, no temporary files.
fn assert_clean_failure(fx: &Fx, args: &[&str], want: &[&str]) -> Result<String> {
    let meta = std::fs::read(fx.wd.meta_path(&fx.id, ARCH)?)?;
    let listing = fx.listing()?;
    let r = fx.extend(args)?;
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
    assert_eq!(fx.listing()?, listing, "build directory changed");
    fx.assert_no_scratch()?;
    Ok(line)
}

#[test]
fn bad_input_gives_one_error_line_and_writes_nothing() -> Result<()> {
    let fx = Fx::new()?;
    // Unknown platform: the known ones are listed.
    assert_clean_failure(
        &fx,
        &["--platform", "aws,nimbus"],
        &["nimbus", "aliyun", "vultr", "live"],
    )?;
    assert_clean_failure(
        &fx,
        &["--platform", "powervs"],
        &["powervs", "not supported"],
    )?;
    assert_clean_failure(&fx, &["--platform", "aws", "--build", "9.9.9"], &["9.9.9"])?;
    // Usage errors exit 2.
    assert_eq!(fx.extend(&[])?.code, 2);
    assert_eq!(fx.extend(&["compress", "--compressor", "lz4"])?.code, 2);

    // A build whose commit is gone (no tmp/repo, no ostree archive) and has no disk.
    let m = fx.meta()?;
    let tar = fx
        .arch_dir()?
        .join(m["images"]["ostree"]["path"].as_str().context("ostree")?);
    let saved = fx.root.join("saved.tar");
    std::fs::rename(&tar, &saved)?;
    let repo_saved = fx.root.join("saved-repo");
    std::fs::rename(fx.wd.repo_dir(), &repo_saved)?;
    let commit = m["ostree-commit"].as_str().unwrap_or("").to_string();
    assert_clean_failure(&fx, &["--platform", "aws"], &[&commit])?;
    assert_clean_failure(&fx, &["--platform", "live"], &[&commit])?;
    std::fs::rename(&saved, &tar)?;
    std::fs::rename(&repo_saved, fx.wd.repo_dir())?;

    // A corrupt base disk: refused by its sha256, nothing derived from it is kept.
    fx.extend_ok(&["--platform", "qemu"])?;
    let q = fx.image("qemu", "qcow2", false)?;
    let good = std::fs::read(&q)?;
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(&q, &bad)?;
    assert_clean_failure(
        &fx,
        &["--platform", "aws,gcp"],
        &["sha256", "does not match", "images.qemu"],
    )?;
    // compress refuses it too.
    assert_clean_failure(
        &fx,
        &["compress", "--artifact", "qemu"],
        &["sha256", "does not match"],
    )?;
    // A base that is not a disk at all.
    std::fs::write(&q, b"not a disk image")?;
    assert_clean_failure(&fx, &["--platform", "aws"], &["does not match"])?;
    assert_clean_failure(&fx, &["compress", "--artifact", "nope"], &["nope", "qemu"])?;
    std::fs::write(&q, &good)?;

    // A corrupt compressed file: decompress refuses it.
    fx.extend_ok(&["compress", "--compressor", "gzip", "--artifact", "qemu"])?;
    let gz = fx.image("qemu", "qcow2.gz", false)?;
    let mut z = std::fs::read(&gz)?;
    let n = z.len();
    z.truncate(n / 2);
    std::fs::write(&gz, &z)?;
    assert_clean_failure(&fx, &["decompress"], &["qcow2.gz"])?;
    Ok(())
}

#[test]
fn full_disk_fails_cleanly() -> Result<()> {
    if !cosa::userns::is_root() {
        eprintln!("notice: full_disk_fails_cleanly needs root (a small tmpfs); skipped");
        return Ok(());
    }
    let fx = Fx::new()?;
    fx.extend_ok(&["--platform", "qemu"])?;
    let arch_dir = fx.arch_dir()?;
    // In a private mount namespace, the arch directory on a tmpfs with 8 MiB to spare:
    // the aws VMDK (about 30 MiB) does not fit.
    let script = format!(
        r#"set -e
A={a}
used=$(du -sk --apparent-size "$A" | cut -f1)
cp -a "$A" "$A.copy"
mount -t tmpfs -o size=$((used + 8192))k cosa-test "$A"
cp -a "$A.copy/." "$A/"
rm -rf "$A.copy"
before=$(sha256sum < "$A/meta.json")
set +e
{bin} --workdir {w} --platform aws 2>"$A.err"
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
        bin = env!("CARGO_BIN_EXE_cosa-extend"),
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
        !files.contains("aws") && !files.contains(cosa::fsutil::TMP_PREFIX),
        "{out}"
    );
    fx.assert_no_scratch()?;
    Ok(())
}
