//! What a build is made of, hashed: the decision "did any input change?".
//!
//! Two hashes, as rpm-ostree computes its `rpmostree.inputhash` (see peers.md §1.2):
//! - the **config checksum**: the flattened treefile (canonical JSON without `metadata`
//!   and `ostree-layers`) and every file it references, plus the image config and the
//!   version lockfile;
//! - the **input hash**: the config checksum and the depsolved package set, each package
//!   as `install <algo>:<hex>` of its repo checksum, sorted (a re-signed or rebuilt
//!   package with the same NEVRA changes it).
//!
//! Before the depsolve, a **fast path** compares the config checksum plus every
//! repository's repomd.xml checksum with what the previous build recorded: equal means
//! unchanged, with one small request per repository and no package metadata.

use sha2::{Digest, Sha256};

use super::pkgs::Package;

/// Commit metadata key under which a build records its fast-path state.
pub const STATE_KEY: &str = "cosa.input-state";

fn hex_sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The config checksum.
pub fn config_checksum(
    treefile: &str,
    image_json: Option<&[u8]>,
    lockfile: Option<&[u8]>,
) -> String {
    let mut h = Sha256::new();
    h.update(format!("treefile {treefile}\n"));
    if let Some(i) = image_json {
        h.update(format!("image {}\n", hex_sha(i)));
    }
    if let Some(l) = lockfile {
        h.update(format!("lockfile {}\n", hex_sha(l)));
    }
    hex::encode(h.finalize())
}

/// The fast-path state from the config checksum and `(repo id, repomd sha256)` pairs.
pub fn fast_state(config: &str, repomd: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(format!("config {config}\n"));
    let mut r: Vec<_> = repomd.to_vec();
    r.sort();
    for (id, sum) in r {
        h.update(format!("repomd {id} {sum}\n"));
    }
    hex::encode(h.finalize())
}

/// The input hash from the config checksum and the resolved packages.
pub fn inputhash(config: &str, packages: &[Package]) -> String {
    let mut h = Sha256::new();
    h.update(format!("config {config}\n"));
    let mut sums: Vec<_> = packages
        .iter()
        .map(|p| format!("install {}\n", p.checksum))
        .collect();
    sums.sort();
    for s in sums {
        h.update(s);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, sum: &str) -> Package {
        Package {
            name: name.into(),
            epoch: 0,
            version: "1".into(),
            release: "1".into(),
            arch: "noarch".into(),
            repo: "r".into(),
            checksum: format!("sha256:{sum}"),
            size: 1,
        }
    }

    #[test]
    fn hashes_move_with_their_inputs_only() {
        let c = config_checksum("t", Some(b"{}"), None);
        assert_ne!(c, config_checksum("t2", Some(b"{}"), None));
        assert_ne!(c, config_checksum("t", Some(b"{\"size\":3}"), None));
        assert_ne!(c, config_checksum("t", Some(b"{}"), Some(b"lock")));
        let a = [pkg("a", "01"), pkg("b", "02")];
        let b = [pkg("b", "02"), pkg("a", "01")];
        assert_eq!(
            inputhash(&c, &a),
            inputhash(&c, &b),
            "order must not matter"
        );
        assert_ne!(
            inputhash(&c, &a),
            inputhash(&c, &[pkg("a", "03"), pkg("b", "02")])
        );
        let r = |s: &str| vec![("x".to_string(), s.to_string())];
        assert_eq!(fast_state(&c, &r("1")), fast_state(&c, &r("1")));
        assert_ne!(fast_state(&c, &r("1")), fast_state(&c, &r("2")));
    }
}
