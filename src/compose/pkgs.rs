//! Packages of a compose: the resolved set, RPM version ordering (rpmvercmp), and
//! the package diff between two builds in rpm-ostree's `db diff` JSON shape, which
//! coreos-assembler stores as meta.json `pkgdiff`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One package of a resolved transaction, as dnf reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub epoch: u64,
    pub version: String,
    pub release: String,
    pub arch: String,
    pub repo: String,
    /// `<algo>:<hex>` of the package file, from the repo metadata.
    pub checksum: String,
    #[serde(default)]
    pub size: u64,
}

impl Package {
    /// `[epoch:]version-release`, epoch omitted when 0 (rpm's EVR display form).
    pub fn evr(&self) -> String {
        if self.epoch == 0 {
            format!("{}-{}", self.version, self.release)
        } else {
            format!("{}:{}-{}", self.epoch, self.version, self.release)
        }
    }

    pub fn nevra(&self) -> String {
        format!("{}-{}.{}", self.name, self.evr(), self.arch)
    }
}

/// rpm's `rpmvercmp`: compare two version (or release) strings segment by segment:
/// runs of digits compare numerically and beat letters; `~` sorts before anything
/// (even the end), `^` after the end but before anything else.
pub fn rpmvercmp(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let sep = |c: u8| !c.is_ascii_alphanumeric() && c != b'~' && c != b'^';
    loop {
        while a.first().is_some_and(|c| sep(*c)) {
            a = &a[1..];
        }
        while b.first().is_some_and(|c| sep(*c)) {
            b = &b[1..];
        }
        // Tilde: older than anything.
        match (a.first() == Some(&b'~'), b.first() == Some(&b'~')) {
            (true, true) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        // Caret: newer than the end, older than anything else.
        match (a.first() == Some(&b'^'), b.first() == Some(&b'^')) {
            (true, true) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (true, false) => {
                return if b.is_empty() {
                    Ordering::Greater
                } else {
                    Ordering::Less
                };
            }
            (false, true) => {
                return if a.is_empty() {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
            }
            _ => {}
        }
        if a.is_empty() || b.is_empty() {
            break;
        }
        let numeric = a[0].is_ascii_digit();
        let take = |s: &[u8]| {
            s.iter()
                .take_while(|c| {
                    if numeric {
                        c.is_ascii_digit()
                    } else {
                        c.is_ascii_alphabetic()
                    }
                })
                .count()
        };
        let (na, nb) = (take(a), take(b));
        if nb == 0 {
            // Different segment types: numeric beats alphabetic.
            return if numeric {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let (sa, sb) = (&a[..na], &b[..nb]);
        let ord = if numeric {
            let (ta, tb) = (strip_zeros(sa), strip_zeros(sb));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            sa.cmp(sb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[na..];
        b = &b[nb..];
    }
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

fn strip_zeros(s: &[u8]) -> &[u8] {
    let z = s.iter().take_while(|c| **c == b'0').count();
    &s[z..]
}

/// Compare two packages' epoch, version, release.
pub fn evr_cmp(a: &Package, b: &Package) -> Ordering {
    a.epoch
        .cmp(&b.epoch)
        .then_with(|| rpmvercmp(&a.version, &b.version))
        .then_with(|| rpmvercmp(&a.release, &b.release))
}

/// rpm-ostree's diff types, as in `rpm-ostree db diff --format=json`.
const ADDED: u8 = 0;
const REMOVED: u8 = 1;
const UPGRADED: u8 = 2;
const DOWNGRADED: u8 = 3;

/// The package diff from `old` to `new`: `[name, type, {PreviousPackage?, NewPackage?}]`
/// entries sorted by name, each package as `[name, evr, arch]`.
pub fn pkgdiff(old: &[Package], new: &[Package]) -> Vec<Value> {
    let key = |p: &Package| (p.name.clone(), p.arch.clone());
    let old: BTreeMap<_, _> = old.iter().map(|p| (key(p), p)).collect();
    let new: BTreeMap<_, _> = new.iter().map(|p| (key(p), p)).collect();
    let tuple = |p: &Package| json!([p.name, p.evr(), p.arch]);
    let mut out = Vec::new();
    let mut keys: Vec<_> = old.keys().chain(new.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        match (old.get(&k), new.get(&k)) {
            (Some(o), Some(n)) => {
                let t = match evr_cmp(o, n) {
                    Ordering::Equal => continue,
                    Ordering::Less => UPGRADED,
                    Ordering::Greater => DOWNGRADED,
                };
                out.push(json!([k.0, t, {"PreviousPackage": tuple(o), "NewPackage": tuple(n)}]));
            }
            (Some(o), None) => out.push(json!([k.0, REMOVED, {"PreviousPackage": tuple(o)}])),
            (None, Some(n)) => out.push(json!([k.0, ADDED, {"NewPackage": tuple(n)}])),
            (None, None) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpmvercmp_table() {
        use Ordering::*;
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0", "2.0", Less),
            ("2.0.1", "2.0", Greater),
            ("1.10", "1.9", Greater),
            ("1.001", "1.1", Equal),
            ("1.0a", "1.0", Greater),
            ("1.0", "1.0a", Less),
            ("a", "1", Less),
            ("1", "a", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0^git1", "1.0", Greater),
            ("1.0^git1", "1.0.1", Less),
            ("fc31", "fc32", Less),
            ("1_0", "1.0", Equal),
            ("0.7.rc4.fc31", "2.fc31", Less),
        ] {
            assert_eq!(rpmvercmp(a, b), want, "{a} vs {b}");
            assert_eq!(rpmvercmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    fn p(name: &str, evr: (u64, &str, &str)) -> Package {
        Package {
            name: name.into(),
            epoch: evr.0,
            version: evr.1.into(),
            release: evr.2.into(),
            arch: "noarch".into(),
            repo: "r".into(),
            checksum: "sha256:00".into(),
            size: 0,
        }
    }

    #[test]
    fn pkgdiff_types() {
        let old = [
            p("a", (0, "1.0", "1")),
            p("b", (0, "1.0", "1")),
            p("c", (1, "2", "1")),
            p("same", (0, "1", "1")),
        ];
        let new = [
            p("a", (0, "1.0", "2")),
            p("c", (0, "9", "1")),
            p("d", (0, "1", "1")),
            p("same", (0, "1", "1")),
        ];
        let d = pkgdiff(&old, &new);
        assert_eq!(
            serde_json::to_value(&d).ok(),
            Some(json!([
                ["a", 2, {"PreviousPackage": ["a", "1.0-1", "noarch"], "NewPackage": ["a", "1.0-2", "noarch"]}],
                ["b", 1, {"PreviousPackage": ["b", "1.0-1", "noarch"]}],
                ["c", 3, {"PreviousPackage": ["c", "1:2-1", "noarch"], "NewPackage": ["c", "9-1", "noarch"]}],
                ["d", 0, {"NewPackage": ["d", "1-1", "noarch"]}],
            ]))
        );
    }
}
