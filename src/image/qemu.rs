//! Booting an image under QEMU with a serial console, like `cosa run`.
//!
//! KVM is used only when it actually works: `/dev/kvm` can exist and still be
//! unusable (nested virtualisation on CI runners fails with "KVM internal error"),
//! so [`kvm_works`] boots a one-sector program under KVM and waits for it to exit
//! through QEMU's `isa-debug-exit` device. Anything else means TCG.

use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};

/// Firmware to boot with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default on x86_64).
    Bios,
    /// OVMF (EDK II).
    Uefi,
}

/// QEMU acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM if it works, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// OVMF firmware files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ovmf {
    /// Separate code (read-only) and variable-store template (copied per run).
    Split {
        code: Utf8PathBuf,
        vars: Utf8PathBuf,
    },
    /// One combined image for `-bios`.
    Combined(Utf8PathBuf),
}

/// Find OVMF: `$COSA_OVMF_CODE` + `$COSA_OVMF_VARS`, then the usual Debian, Fedora and
/// Arch locations.
pub fn find_ovmf() -> Result<Ovmf> {
    if let (Ok(c), Ok(v)) = (
        std::env::var("COSA_OVMF_CODE"),
        std::env::var("COSA_OVMF_VARS"),
    ) {
        return Ok(Ovmf::Split {
            code: c.into(),
            vars: v.into(),
        });
    }
    let split = [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
        (
            "/usr/share/edk2/ovmf/OVMF_CODE.fd",
            "/usr/share/edk2/ovmf/OVMF_VARS.fd",
        ),
        (
            "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
            "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
        ),
    ];
    for (c, v) in split {
        if Utf8Path::new(c).is_file() && Utf8Path::new(v).is_file() {
            return Ok(Ovmf::Split {
                code: c.into(),
                vars: v.into(),
            });
        }
    }
    for c in ["/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd"] {
        if Utf8Path::new(c).is_file() {
            return Ok(Ovmf::Combined(c.into()));
        }
    }
    bail!(
        "no OVMF firmware found (install the ovmf package, or set COSA_OVMF_CODE and COSA_OVMF_VARS)"
    )
}

/// Whether KVM works here: a boot sector that writes to `isa-debug-exit` makes QEMU
/// exit with status 3 within seconds under working KVM.
pub fn kvm_works() -> bool {
    if std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    match probe_kvm() {
        Ok(ok) => ok,
        Err(e) => {
            tracing::debug!("KVM probe failed: {e:#}");
            false
        }
    }
}

fn probe_kvm() -> Result<bool> {
    let dir = tempfile::Builder::new()
        .prefix("cosa-kvm-probe")
        .tempdir()?;
    let img = dir.path().join("probe.img");
    // mov al, 1; out 0xf4, al; hlt; jmp $-1
    let mut sector = vec![0u8; 512];
    sector[..7].copy_from_slice(&[0xB0, 0x01, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]);
    sector[510] = 0x55;
    sector[511] = 0xAA;
    let f = std::fs::File::create(&img)?;
    f.write_all_at(&sector, 0)?;
    drop(f);
    let mut child = Command::new("qemu-system-x86_64")
        // The same CPU model as `run` uses with KVM.
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-machine",
            "pc",
            "-nodefaults",
        ])
        .args(["-display", "none"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", img.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running qemu-system-x86_64")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st.code() == Some(3));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A VM to run.
#[derive(Debug, Clone)]
pub struct Vm {
    pub disk: Utf8PathBuf,
    /// `qcow2` or `raw`.
    pub format: &'static str,
    /// Logical sector size the disk is presented with.
    pub sector: u64,
    pub firmware: Firmware,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Resolved acceleration (not `Auto`).
    pub kvm: bool,
    /// Exit instead of rebooting (tests: the guest powers off or reboots when done).
    pub no_reboot: bool,
    /// Extra QEMU arguments, appended.
    pub extra: Vec<String>,
}

/// A QEMU command line for `vm`. `vars` is the writable copy of the OVMF variable
/// store (for [`Ovmf::Split`]).
pub fn command(vm: &Vm, ovmf: Option<&Ovmf>, vars: Option<&Utf8Path>) -> Result<Command> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-machine",
        "q35",
        "-accel",
        if vm.kvm { "kvm" } else { "tcg" },
    ]);
    if vm.kvm {
        c.args(["-cpu", "host"]);
    }
    c.args([
        "-m",
        &vm.memory_mib.to_string(),
        "-smp",
        &vm.cpus.to_string(),
    ]);
    c.args(["-nographic", "-snapshot"]);
    c.arg("-drive").arg(format!(
        "if=none,id=disk0,format={},file={}",
        vm.format,
        vm.disk.as_str().replace(',', ",,")
    ));
    let mut dev = "virtio-blk-pci,drive=disk0,bootindex=1".to_string();
    if vm.sector != 512 {
        dev.push_str(&format!(
            ",logical_block_size={0},physical_block_size={0}",
            vm.sector
        ));
    }
    c.args(["-device", &dev]);
    c.args(["-nic", "user,model=virtio-net-pci"]);
    if vm.firmware == Firmware::Uefi {
        match ovmf {
            Some(Ovmf::Split { code, .. }) => {
                let vars = vars.context("OVMF variable store copy missing")?;
                c.arg("-drive").arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={code}"
                ));
                c.arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=1,file={vars}"));
            }
            Some(Ovmf::Combined(p)) => {
                c.arg("-bios").arg(p);
            }
            None => bail!("UEFI boot without OVMF"),
        }
    }
    if vm.no_reboot {
        c.arg("-no-reboot");
    }
    c.args(&vm.extra);
    Ok(c)
}

/// Boot `vm` with the console on this terminal; returns when QEMU exits. With
/// `tcg_fallback`, a KVM that fails the guest (see [`run_watched`]) is left for TCG:
/// the VM boots again, emulated.
pub fn run(vm: &Vm, tcg_fallback: bool) -> Result<()> {
    match boot(vm)? {
        Ended::Exited => Ok(()),
        Ended::KvmFailed if tcg_fallback => {
            tracing::warn!(
                "KVM failed the guest (\"KVM internal error\": this /dev/kvm passes a probe but not a real kernel, as under some nested virtualisation); booting again with TCG"
            );
            let tcg = Vm {
                kvm: false,
                ..vm.clone()
            };
            match boot(&tcg)? {
                Ended::Exited => Ok(()),
                Ended::KvmFailed => bail!("qemu-system-x86_64 reported a KVM error under TCG"),
            }
        }
        Ended::KvmFailed => {
            bail!(
                "KVM failed the guest (\"KVM internal error\"); QEMU was stopped: use --accel tcg"
            )
        }
    }
}

fn boot(vm: &Vm) -> Result<Ended> {
    let ovmf = match vm.firmware {
        Firmware::Uefi => Some(find_ovmf()?),
        Firmware::Bios => None,
    };
    // The variable store is written by the firmware: each run gets its own copy.
    let tmp = tempfile::Builder::new()
        .prefix("cosa-ovmf-vars")
        .tempfile_in(std::env::temp_dir())
        .context("creating a temporary OVMF variable store")?;
    let vars = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf())
        .map_err(|p| anyhow::anyhow!("non-UTF-8 path {}", p.display()))?;
    if let Some(Ovmf::Split { vars: tmpl, .. }) = &ovmf {
        std::fs::copy(tmpl, &vars).with_context(|| format!("copying {tmpl}"))?;
    }
    let c = command(vm, ovmf.as_ref(), Some(&vars))?;
    tracing::info!(
        "booting {} ({}, {}, {})",
        vm.disk,
        if vm.firmware == Firmware::Uefi {
            "UEFI"
        } else {
            "BIOS"
        },
        if vm.kvm { "KVM" } else { "TCG" },
        if vm.sector == 512 {
            "512-byte sectors"
        } else {
            "4096-byte sectors"
        }
    );
    run_watched(c)
}

/// How a QEMU run ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// QEMU exited successfully.
    Exited,
    /// KVM failed the guest; QEMU was stopped.
    KvmFailed,
}

/// What QEMU prints on stderr when KVM cannot run the guest; QEMU then pauses the
/// VM and waits for ever.
const KVM_FAILURES: [&str; 2] = ["KVM internal error", "KVM: entry failed"];

/// Run QEMU with stdin and stdout on this terminal, passing its stderr through
/// while watching it for a KVM failure, on which QEMU is killed. A QEMU that
/// exits unsuccessfully is an error.
fn run_watched(mut c: Command) -> Result<Ended> {
    use std::io::{BufRead, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut child = c
        .stderr(Stdio::piped())
        .spawn()
        .context("running qemu-system-x86_64")?;
    let failed = Arc::new(AtomicBool::new(false));
    let watcher = child.stderr.take().map(|err| {
        let failed = failed.clone();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(err);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let _ = std::io::stderr().write_all(&line);
                let text = String::from_utf8_lossy(&line);
                if KVM_FAILURES.iter().any(|m| text.contains(m)) {
                    failed.store(true, Ordering::SeqCst);
                }
                line.clear();
            }
        })
    });
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for qemu-system-x86_64")? {
            break Some(st);
        }
        if failed.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if let Some(w) = watcher {
        let _ = w.join();
    }
    // Killed, or exited with the failure on stderr.
    let Some(status) = status.filter(|_| !failed.load(Ordering::SeqCst)) else {
        return Ok(Ended::KvmFailed);
    };
    if !status.success() {
        bail!("qemu-system-x86_64 exited with {status}");
    }
    Ok(Ended::Exited)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]).stdout(Stdio::null());
        c
    }

    /// A QEMU that reports a KVM failure and then waits (as QEMU does, the VM
    /// paused) is stopped and reported; others end as they exit.
    #[test]
    fn kvm_failure_stops_qemu() -> Result<()> {
        // Left alone, the sleep ends after 600 s and the run counts as exited.
        let ended = run_watched(sh(
            "echo booting; echo 'KVM internal error. Suberror: 1' >&2; exec sleep 600",
        ))?;
        assert_eq!(ended, Ended::KvmFailed);
        assert_eq!(run_watched(sh("echo warning >&2; exit 0"))?, Ended::Exited);
        let e = run_watched(sh("exit 3")).unwrap_err();
        assert!(format!("{e:#}").contains("exited with"), "{e:#}");
        Ok(())
    }

    #[test]
    fn command_line() {
        let vm = Vm {
            disk: "/b/x,y.qcow2".into(),
            format: "qcow2",
            sector: 4096,
            firmware: Firmware::Uefi,
            memory_mib: 1024,
            cpus: 1,
            kvm: false,
            no_reboot: true,
            extra: vec!["-x".into()],
        };
        let o = Ovmf::Split {
            code: "/c.fd".into(),
            vars: "/v.fd".into(),
        };
        let c = command(&vm, Some(&o), Some(Utf8Path::new("/tmp/v"))).unwrap();
        let a: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let s = a.join(" ");
        assert!(s.contains("-accel tcg"), "{s}");
        assert!(s.contains("file=/b/x,,y.qcow2"), "{s}");
        assert!(s.contains("logical_block_size=4096"), "{s}");
        assert!(s.contains("if=pflash,format=raw,unit=1,file=/tmp/v"), "{s}");
        assert!(s.ends_with("-no-reboot -x"), "{s}");
    }
}
