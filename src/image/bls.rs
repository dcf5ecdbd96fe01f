//! Boot Loader Specification entries (`/loader/entries/*.conf` on the boot filesystem),
//! as `ostree admin deploy` writes them:
//!
//! ```text
//! title Example OS 1.20240101.0 (ostree:0)
//! version 1
//! options rw root=UUID=... ostree=/ostree/boot.1/example-os/<bootcsum>/0
//! linux /ostree/example-os-<bootcsum>/vmlinuz-6.1.0-56-cloud-amd64
//! initrd /ostree/example-os-<bootcsum>/initramfs-6.1.0-56-cloud-amd64.img
//! ```
//!
//! The `options` line is the one place kernel arguments live: grub.cfg is generated
//! from these entries ([`super::grub::grub_cfg`]), so changing an image's kernel
//! arguments means rewriting this line and regenerating grub.cfg.

use anyhow::{Result, bail};

/// One BLS entry; unknown keys are kept in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlsEntry {
    /// The entry's file name (e.g. `ostree-1-example-os.conf`).
    pub file_name: String,
    /// `(key, value)` lines in file order, `options` included.
    pub lines: Vec<(String, String)>,
}

impl BlsEntry {
    /// Parse an entry; `origin` names it in errors.
    pub fn parse(file_name: &str, text: &str, origin: &str) -> Result<Self> {
        let mut lines = Vec::new();
        for (i, l) in text.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (k, v) = match l.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim()),
                None => (l, ""),
            };
            lines.push((k.to_string(), v.to_string()));
            if k == "options" && v.contains('\n') {
                bail!("{origin}:{}: multi-line options", i + 1);
            }
        }
        let e = BlsEntry {
            file_name: file_name.to_string(),
            lines,
        };
        if e.get("linux").is_none() {
            bail!("{origin}: BLS entry has no `linux` line");
        }
        Ok(e)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a key that may repeat (`initrd`).
    pub fn get_all(&self, key: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn title(&self) -> &str {
        self.get("title").unwrap_or(&self.file_name)
    }

    /// The kernel arguments, split on white space.
    pub fn kargs(&self) -> Vec<String> {
        self.get("options")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Replace the kernel arguments.
    pub fn set_kargs(&mut self, kargs: &[String]) {
        let v = kargs.join(" ");
        match self.lines.iter_mut().find(|(k, _)| k == "options") {
            Some(l) => l.1 = v,
            None => self.lines.push(("options".into(), v)),
        }
    }

    /// Remove every `key` and `key=...` argument, then append `add`.
    pub fn replace_karg(&mut self, key: &str, add: Option<&str>) {
        let mut k: Vec<String> = self
            .kargs()
            .into_iter()
            .filter(|a| a != key && !a.starts_with(&format!("{key}=")))
            .collect();
        if let Some(a) = add {
            k.push(a.to_string());
        }
        self.set_kargs(&k);
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.lines {
            s.push_str(k);
            if !v.is_empty() {
                s.push(' ');
                s.push_str(v);
            }
            s.push('\n');
        }
        s
    }

    /// BLS `version`, for ordering: ostree numbers the newest deployment highest.
    pub fn version(&self) -> u64 {
        self.get("version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: &str = "title Example OS 1 (ostree:0)\nversion 1\noptions rw root=UUID=x ostree=/ostree/boot.1/e/abc/0\nlinux /ostree/e-abc/vmlinuz-6\ninitrd /ostree/e-abc/initramfs-6.img\n";

    #[test]
    fn parse_edit_serialise() {
        let mut e = BlsEntry::parse("ostree-1-e.conf", E, "e.conf").unwrap();
        assert_eq!(e.title(), "Example OS 1 (ostree:0)");
        assert_eq!(e.kargs()[0], "rw");
        e.replace_karg("ignition.platform.id", Some("ignition.platform.id=qemu"));
        e.replace_karg("ignition.platform.id", Some("ignition.platform.id=metal"));
        let t = e.to_text();
        assert!(
            t.contains("ostree=/ostree/boot.1/e/abc/0 ignition.platform.id=metal\n"),
            "{t}"
        );
        assert_eq!(t.matches("ignition.platform.id").count(), 1);
        assert_eq!(BlsEntry::parse("ostree-1-e.conf", &t, "x").unwrap(), e);
        assert!(BlsEntry::parse("x", "title t\n", "x").is_err());
    }
}
