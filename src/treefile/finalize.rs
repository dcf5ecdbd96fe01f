//! After merging: substitute `${var}`, normalise, and check what needs the whole tree.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Result, bail};
use camino::Utf8Path;

use super::Treefile;
use super::text::substitute;
use super::types::VarValue;

/// Turn the merged tree loaded from `top` into the final treefile.
pub(crate) fn finalize(
    mut tf: Treefile,
    top: &Utf8Path,
    basearch: &str,
    vars: BTreeMap<String, VarValue>,
) -> Result<Treefile> {
    tf.basearch = basearch.to_string();
    tf.variables = vars;
    substitute_all(&mut tf).map_err(|e| anyhow::anyhow!("{top}: {e}"))?;

    dedup(&mut tf.packages);
    override_repo_packages(&mut tf);
    // Nested objects in free-form maps get a fixed (sorted) key order, so the
    // serialization, hence the checksum, does not depend on how they were written.
    for v in tf
        .add_commit_metadata
        .values_mut()
        .chain(tf.metadata.values_mut())
    {
        v.sort_all_objects();
    }

    if tf.ostree_ref.is_empty() {
        bail!("{top}: `ref` is mandatory, and no file in its include tree sets it");
    }
    if tf.packages.is_empty() {
        bail!("{top}: `packages` is mandatory, and no file in its include tree lists any");
    }
    // rpm-ostree refuses this combination too: without machine-id compat, units are
    // enabled by preset on first boot instead.
    if tf.machineid_compat == Some(false) && !tf.units.is_empty() {
        bail!("{top}: `units` cannot be used with `machineid-compat: false`");
    }
    Ok(tf)
}

/// `${var}` in `ref`, `automatic-version-prefix`, `mutate-os-release`, package names
/// (`packages`, `exclude-packages`, `repo-packages`) and the top-level string values of
/// `add-commit-metadata` and `metadata` (as rpm-ostree does for those two).
fn substitute_all(tf: &mut Treefile) -> Result<(), String> {
    let basearch = tf.basearch.clone();
    let releasever = tf.releasever.as_ref().map(|r| r.to_string());
    let vars = tf.variables.clone();
    let lookup = move |name: &str| match name {
        "basearch" => Some(basearch.clone()),
        "releasever" => releasever.clone(),
        _ => vars.get(name).map(|v| v.to_string()),
    };
    let sub = |key: &str, s: &mut String| -> Result<(), String> {
        *s = substitute(s, &lookup).map_err(|e| format!("{key}: {e}"))?;
        Ok(())
    };
    sub("ref", &mut tf.ostree_ref)?;
    if let Some(s) = &mut tf.automatic_version_prefix {
        sub("automatic-version-prefix", s)?;
    }
    if let Some(s) = &mut tf.mutate_os_release {
        sub("mutate-os-release", s)?;
    }
    for p in &mut tf.packages {
        sub("packages", p)?;
    }
    for p in &mut tf.exclude_packages {
        sub("exclude-packages", p)?;
    }
    for p in tf
        .repo_packages
        .iter_mut()
        .flat_map(|rp| rp.packages.iter_mut())
    {
        sub("repo-packages", p)?;
    }
    for (key, map) in [
        ("add-commit-metadata", &mut tf.add_commit_metadata),
        ("metadata", &mut tf.metadata),
    ] {
        for v in map.values_mut() {
            if let serde_json::Value::String(s) = v {
                sub(key, s)?;
            }
        }
    }
    Ok(())
}

/// Keep the first occurrence of each entry, in order.
fn dedup(v: &mut Vec<String>) {
    let mut seen = HashSet::new();
    v.retain(|p| seen.insert(p.clone()));
}

/// A package pinned to a repo by a later `repo-packages` entry (the includer's, or a
/// later one in the same file) overrides an earlier pin of the same package, as in
/// rpm-ostree; entries left empty are dropped.
fn override_repo_packages(tf: &mut Treefile) {
    let mut seen = HashSet::new();
    let mut kept: Vec<_> = (tf.repo_packages.drain(..).rev())
        .map(|mut rp| {
            rp.packages.retain(|p| seen.insert(p.clone()));
            rp
        })
        .filter(|rp| !rp.packages.is_empty())
        .collect();
    kept.reverse();
    tf.repo_packages = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::treefile::types::RepoPackages;

    fn rp(repo: &str, pkgs: &[&str]) -> RepoPackages {
        RepoPackages {
            repo: repo.into(),
            packages: pkgs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn later_repo_pins_override_earlier_ones() {
        let mut tf = Treefile {
            repo_packages: vec![rp("a", &["x", "y"]), rp("b", &["y"]), rp("c", &["x"])],
            ..Default::default()
        };
        override_repo_packages(&mut tf);
        assert_eq!(tf.repo_packages, vec![rp("b", &["y"]), rp("c", &["x"])]);
    }

    #[test]
    fn dedup_keeps_first_in_order() {
        let mut v: Vec<String> = ["b", "a", "b", "c", "a"].map(String::from).into();
        dedup(&mut v);
        assert_eq!(v, ["b", "a", "c"]);
    }
}
