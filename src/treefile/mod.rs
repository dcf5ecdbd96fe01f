//! rpm-ostree treefiles (`manifest.yaml`): loading, flattening, checksumming.
//!
//! [`load`] reads a treefile (YAML, or JSON for `*.json`), resolves `include`,
//! `arch-include` and `conditional-include` relative to the including file, merges
//! everything with rpm-ostree's rules (see `merge.rs`), substitutes `${var}`, and
//! validates. The result is one [`Treefile`] with typed fields; optional settings are
//! `Option`s whose defaults live in the `*_or_default`/`*_enabled` methods, not in the
//! data, so the serialized treefile shows what was written.
//!
//! Only the keys listed on [`Treefile`] (plus the include keys, `variables` and
//! `packages-<arch>`) are accepted. Any other key, including rpm-ostree keys cosa does
//! not implement (`ostree-layers`, `check-passwd`, `container`, ...), is an error
//! naming the key, the file and (in YAML) the line: a setting must never be silently
//! ignored. JSON treefiles may carry `comment*` keys.
//!
//! [`Treefile::checksum`] follows rpm-ostree's treefile checksum: SHA-256 over the
//! compact re-serialization of the flattened treefile (so comments, white space and
//! key order do not count, and `metadata` is left out), then the files it references.
//! It is not byte-compatible with rpm-ostree's (the serialization differs), only
//! equivalent in what it covers.
//!
//! Modules: `raw` (one document as written), `load` (files and includes), `merge`,
//! `cond` (conditions), `text` (package splitting, `${var}`), `finalize`
//! (substitution and whole-tree checks), `types` (field value types).

mod cond;
mod finalize;
mod load;
mod merge;
mod raw;
mod text;
mod types;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use load::MAX_INCLUDE_DEPTH;
pub use types::{
    AddFile, BootLocation, Edition, ExternalFile, ReleaseVer, RemoveFromPackage, RepoPackages,
    VarValue,
};

/// A flattened treefile: includes merged, variables substituted, validated.
///
/// Serialized (kebab-case, this field order) by [`Treefile::to_json_pretty`] and
/// [`Treefile::canonical_json`]. List fields are in merge order (see `merge.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Treefile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edition: Option<Edition>,
    /// `ref`: the ostree branch to commit to.
    #[serde(rename = "ref")]
    pub ostree_ref: String,
    /// The architecture the treefile was loaded for (selects `packages-<arch>`,
    /// `arch-include`).
    pub basearch: String,
    /// User variables from every file (the includer wins), without the reserved
    /// `basearch` and `releasever`. Already applied, so not part of the checksum.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, VarValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub releasever: Option<ReleaseVer>,
    /// Repo ids from `*.repo` files beside the treefile; `None` means every enabled repo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repos: Option<Vec<String>>,
    /// Package names or provides: `packages` + `packages-<basearch>` of every file,
    /// split and deduplicated. See [`Treefile::packages`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_packages: Vec<String>,
    /// Packages pinned to a repo; a package appears in at most one entry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repo_packages: Vec<RepoPackages>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add_files: Vec<AddFile>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove_files: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove_from_packages: Vec<RemoveFromPackage>,
    /// Inline scripts, in execution order (see `merge.rs`); run before
    /// `postprocess-script`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub postprocess: Vec<String>,
    /// An executable run last in the target tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postprocess_script: Option<ExternalFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automatic_version_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automatic_version_suffix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutate_os_release: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub add_commit_metadata: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machineid_compat: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_location: Option<BootLocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recommends: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub documentation: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub initramfs_args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selinux: Option<bool>,
    /// Free-form data for other tools; not part of the checksum.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// Load `path` (YAML, or JSON when the file ends in .json), resolve include /
/// arch-include / conditional-include relative to the including file, merge,
/// substitute variables, validate.
pub fn load(path: &Utf8Path, basearch: &str) -> Result<Treefile> {
    crate::names::validate_arch(basearch)?;
    // Absolute, but symlinks kept: includes resolve beside the path as given, as
    // rpm-ostree does.
    let top = std::path::absolute(path).with_context(|| format!("resolving {path}"))?;
    let top = Utf8PathBuf::try_from(top).with_context(|| format!("resolving {path}"))?;
    let mut loader = load::Loader::new(basearch);
    let merged = loader.load(&top, 0)?;
    finalize::finalize(merged, &top, basearch, loader.vars)
}

impl Treefile {
    /// `packages` + `packages-<basearch>` from every file, white-space split except
    /// single-quoted entries (`'podman >= 4.1'` stays one query), in merge order,
    /// deduplicated.
    pub fn packages(&self) -> Vec<String> {
        self.packages.clone()
    }

    /// Canonical JSON of the flattened treefile: compact, fixed field order, maps
    /// sorted, with `metadata` (and the already applied `variables`) left out, as
    /// rpm-ostree hashes it. (`ostree-layers`, which rpm-ostree also leaves out, is
    /// not supported.)
    pub fn canonical_json(&self) -> Vec<u8> {
        let mut c = self.clone();
        c.metadata.clear();
        c.variables.clear();
        // Cannot fail: string keys, no fallible Serialize impls.
        serde_json::to_vec(&c).unwrap_or_default()
    }

    /// Files the treefile references that count as inputs: `postprocess-script` and
    /// every `add-files` source, as (name as written, absolute path), sorted by name.
    pub fn externals(&self) -> Vec<(String, Utf8PathBuf)> {
        let script = self.postprocess_script.iter();
        let mut v: Vec<(String, Utf8PathBuf)> = (script.map(|s| (s.name.clone(), s.path.clone())))
            .chain(
                self.add_files
                    .iter()
                    .map(|a| (a.src.clone(), a.src_path.clone())),
            )
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// SHA-256 (hex) over [`Treefile::canonical_json`], then for each of
    /// [`Treefile::externals`] in order: its name, a NUL byte, and the SHA-256 of its
    /// contents (fixed-size, so names and contents cannot run into each other).
    pub fn checksum(&self) -> Result<String> {
        let mut h = Sha256::new();
        h.update(self.canonical_json());
        for (name, path) in self.externals() {
            let mut f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            let mut fh = Sha256::new();
            io::copy(&mut f, &mut fh).with_context(|| format!("reading {path}"))?;
            h.update(name.as_bytes());
            h.update([0u8]);
            h.update(fh.finalize());
        }
        Ok(hex::encode(h.finalize()))
    }

    /// The merged treefile as pretty JSON (for `--print-only`, and stored in the build).
    pub fn to_json_pretty(&self) -> String {
        // Cannot fail: string keys, no fallible Serialize impls.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// `selinux`, default true.
    pub fn selinux_enabled(&self) -> bool {
        self.selinux.unwrap_or(true)
    }

    /// `recommends` (install weak dependencies), default true.
    pub fn recommends_enabled(&self) -> bool {
        self.recommends.unwrap_or(true)
    }

    /// `documentation` (install docs), default true.
    pub fn documentation_enabled(&self) -> bool {
        self.documentation.unwrap_or(true)
    }

    /// `machineid-compat`, default true.
    pub fn machineid_compat_enabled(&self) -> bool {
        self.machineid_compat.unwrap_or(true)
    }

    /// `edition`, default 2014.
    pub fn edition_or_default(&self) -> Edition {
        self.edition.unwrap_or(Edition::E2014)
    }

    /// `boot-location`; the default is `modules` in edition 2024, `new` before.
    pub fn boot_location_or_default(&self) -> BootLocation {
        self.boot_location
            .unwrap_or(match self.edition_or_default() {
                Edition::E2024 => BootLocation::Modules,
                Edition::E2014 => BootLocation::New,
            })
    }

    /// `automatic-version-suffix`, default `.` (validated to be one ASCII character).
    pub fn automatic_version_suffix_or_default(&self) -> char {
        (self.automatic_version_suffix.as_deref())
            .and_then(|s| s.chars().next())
            .unwrap_or('.')
    }

    /// The `remove-from-packages` regexes for `package`, from every entry naming it.
    pub fn remove_from_package_patterns(&self, package: &str) -> Vec<String> {
        (self.remove_from_packages.iter())
            .filter(|r| r.package == package)
            .flat_map(|r| r.patterns.iter().cloned())
            .collect()
    }
}
