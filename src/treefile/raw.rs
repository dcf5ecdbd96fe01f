//! One treefile document as written, before includes are resolved.
//!
//! The top-level map is read by a hand-written visitor rather than a derived struct:
//! `packages-<arch>` keys are open-ended, JSON tolerates `comment*` keys, and we want
//! every unknown key reported with its position. (Derived `flatten` would lose
//! positions; `deny_unknown_fields` cannot be combined with it.) Values are read with
//! `next_value`, so a wrong type is reported by the parser with file:line:column.
//!
//! In YAML an unknown key is recorded with its position (from serde-saphyr's
//! `Spanned`) and reported after parsing; in JSON it is an error at once, which
//! serde_json locates. Both name the key.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, de::Error as _};
use serde_saphyr::Spanned;

use super::Treefile;
use super::cond::Condition;
use super::types::{AddFile, ExternalFile};

/// Keys rpm-ostree understands that cosa does not implement: named as such in errors.
const RPM_OSTREE_ONLY_KEYS: &[&str] = &[
    "advisories-metadata",
    "basearch",
    "bootstrap-packages",
    "check-groups",
    "check-passwd",
    "cliwrap",
    "cliwrap-binaries",
    "container",
    "container-cmd",
    "etc-group-members",
    "gpg-key",
    "ignore-devices",
    "ignore-removed-groups",
    "ignore-removed-users",
    "ima",
    "install-langs",
    "lockfile-repos",
    "modules",
    "no-initramfs",
    "opt-usrlocal",
    "ostree-layers",
    "ostree-override-layers",
    "platform-module",
    "preserve-passwd",
    "readonly-executables",
    "repo-metadata",
    "repovars",
    "rojig",
    "rpmdb",
    "rpmdb-normalize",
    "selinux-label-version",
    "sysusers",
    "tmp-is-dir",
];

/// The error text for a key we do not support.
pub(crate) fn unknown_key_message(key: &str) -> String {
    if RPM_OSTREE_ONLY_KEYS.contains(&key) {
        format!("`{key}` is an rpm-ostree treefile key that is not supported by cosa")
    } else {
        format!("unknown key `{key}`: not a treefile key supported by cosa")
    }
}

/// A 1-based position in a YAML file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) line: u64,
    pub(crate) column: u64,
}

/// What `include` (or an `arch-include` value, or a conditional `include`) names.
#[derive(Debug)]
pub(crate) enum IncludeSpec {
    Files(Vec<String>),
    /// An inline treefile (only in `conditional-include`).
    Inline(Box<RawTreefile>),
}

#[derive(Debug)]
pub(crate) struct CondInclude {
    /// All must hold.
    pub(crate) conditions: Vec<Condition>,
    pub(crate) include: IncludeSpec,
}

/// One document: the mergeable fields in `body` (packages not yet split, file
/// references not yet resolved), plus the parts consumed while loading.
#[derive(Debug, Default)]
pub(crate) struct RawTreefile {
    pub(crate) body: Treefile,
    pub(crate) include: Vec<String>,
    pub(crate) arch_include: BTreeMap<String, Vec<String>>,
    pub(crate) conditional_include: Vec<CondInclude>,
    /// `packages-<arch>` for every arch, keyed by arch.
    pub(crate) arch_packages: BTreeMap<String, Vec<String>>,
    /// Every key present, in order, with its position when known.
    pub(crate) keys: Vec<(String, Option<Pos>)>,
    /// YAML keys we do not support (JSON ones fail at once).
    pub(crate) unknown: Vec<(String, Option<Pos>)>,
}

impl RawTreefile {
    pub(crate) fn has(&self, key: &str) -> bool {
        self.keys.iter().any(|(k, _)| k == key)
    }
    pub(crate) fn pos(&self, key: &str) -> Option<Pos> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, p)| *p)
    }
}

/// A whole document; `JSON` selects the JSON rules (tolerated `comment*` keys).
pub(crate) struct RawDoc<const JSON: bool>(pub(crate) RawTreefile);

impl<'de, const JSON: bool> Deserialize<'de> for RawDoc<JSON> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TreefileVisitor { json: JSON })
            .map(RawDoc)
    }
}

#[derive(Clone, Copy)]
struct TreefileVisitor {
    json: bool,
}

impl<'de> Visitor<'de> for TreefileVisitor {
    type Value = RawTreefile;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a treefile (a map of keys)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawTreefile, A::Error> {
        let mut r = RawTreefile::default();
        let mut seen = HashSet::new();
        while let Some(key) = m.next_key::<Spanned<String>>()? {
            let line = key.referenced.line();
            let pos = (line > 0).then(|| Pos {
                line,
                column: key.referenced.column(),
            });
            let key = key.value;
            // YAML duplicates are refused by the parser; serde_json keeps the last.
            if !seen.insert(key.clone()) {
                return Err(A::Error::custom(format!("duplicate key `{key}`")));
            }
            let b = &mut r.body;
            match key.as_str() {
                "ref" => b.ostree_ref = m.next_value::<Option<String>>()?.unwrap_or_default(),
                "edition" => b.edition = m.next_value()?,
                "include" => r.include = OneOrMany::into_vec(m.next_value()?),
                "arch-include" => {
                    let v: Option<BTreeMap<String, OneOrMany<String>>> = m.next_value()?;
                    r.arch_include = v
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                }
                "conditional-include" => {
                    r.conditional_include = m.next_value_seed(CondListSeed { json: self.json })?
                }
                "variables" => b.variables = m.next_value::<Option<_>>()?.unwrap_or_default(),
                "releasever" => b.releasever = m.next_value()?,
                "packages" => b.packages = m.next_value::<Option<_>>()?.unwrap_or_default(),
                "exclude-packages" => {
                    b.exclude_packages = m.next_value::<Option<_>>()?.unwrap_or_default()
                }
                "repos" => b.repos = m.next_value()?,
                "repo-packages" => {
                    b.repo_packages = m.next_value::<Option<_>>()?.unwrap_or_default()
                }
                "add-files" => {
                    let v: Option<Vec<(String, String)>> = m.next_value()?;
                    b.add_files = (v.unwrap_or_default().into_iter())
                        .map(|(src, dest)| AddFile {
                            src,
                            src_path: Default::default(),
                            dest,
                        })
                        .collect();
                }
                "remove-files" => b.remove_files = m.next_value::<Option<_>>()?.unwrap_or_default(),
                "remove-from-packages" => {
                    b.remove_from_packages = m.next_value::<Option<_>>()?.unwrap_or_default()
                }
                "postprocess" => b.postprocess = m.next_value::<Option<_>>()?.unwrap_or_default(),
                "postprocess-script" => {
                    let v: Option<String> = m.next_value()?;
                    b.postprocess_script = v.map(|name| ExternalFile {
                        name,
                        path: Default::default(),
                    });
                }
                "automatic-version-prefix" => b.automatic_version_prefix = m.next_value()?,
                "automatic-version-suffix" => b.automatic_version_suffix = m.next_value()?,
                "mutate-os-release" => b.mutate_os_release = m.next_value()?,
                "add-commit-metadata" => {
                    b.add_commit_metadata = m.next_value::<Option<_>>()?.unwrap_or_default()
                }
                "units" => b.units = m.next_value::<Option<_>>()?.unwrap_or_default(),
                "default-target" => b.default_target = m.next_value()?,
                "machineid-compat" => b.machineid_compat = m.next_value()?,
                "boot-location" => b.boot_location = m.next_value()?,
                "recommends" => b.recommends = m.next_value()?,
                "documentation" => b.documentation = m.next_value()?,
                "initramfs-args" => {
                    b.initramfs_args = m.next_value::<Option<_>>()?.unwrap_or_default()
                }
                "selinux" => b.selinux = m.next_value()?,
                "metadata" => b.metadata = m.next_value::<Option<_>>()?.unwrap_or_default(),
                k if k.len() > "packages-".len() && k.starts_with("packages-") => {
                    let v: Option<Vec<String>> = m.next_value()?;
                    let arch = k.strip_prefix("packages-").unwrap_or_default().to_string();
                    r.arch_packages.insert(arch, v.unwrap_or_default());
                }
                k if self.json && k.starts_with("comment") => {
                    m.next_value::<IgnoredAny>()?;
                    continue;
                }
                k if self.json => return Err(A::Error::custom(unknown_key_message(k))),
                _ => {
                    m.next_value::<IgnoredAny>()?;
                    r.unknown.push((key.clone(), pos));
                }
            }
            r.keys.push((key, pos));
        }
        Ok(r)
    }
}

/// A string or a list of `T` (`include: a.yaml` or `include: [a.yaml, b.yaml]`).
struct OneOrMany<T>(Vec<T>);

impl<T> OneOrMany<T> {
    fn into_vec(v: Option<Self>) -> Vec<T> {
        v.map(|v| v.0).unwrap_or_default()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                let d = de::value::StrDeserializer::<E>::new(s);
                Ok(OneOrMany(vec![T::deserialize(d)?]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(OneOrMany(v))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `conditional-include: [{if, include}, ...]`; the seed carries the format down to
/// inline treefiles.
struct CondListSeed {
    json: bool,
}

impl<'de> DeserializeSeed<'de> for CondListSeed {
    type Value = Vec<CondInclude>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CondListSeed {
    type Value = Vec<CondInclude>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of {if, include} maps")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut v = Vec::new();
        while let Some(c) = seq.next_element_seed(CondSeed { json: self.json })? {
            v.push(c);
        }
        Ok(v)
    }
}

struct CondSeed {
    json: bool,
}

impl<'de> DeserializeSeed<'de> for CondSeed {
    type Value = CondInclude;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CondSeed {
    type Value = CondInclude;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map with `if` and `include`")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<CondInclude, A::Error> {
        let mut conditions = None;
        let mut include = None;
        while let Some(key) = m.next_key::<String>()? {
            match key.as_str() {
                "if" if conditions.is_none() => {
                    conditions = Some(m.next_value::<OneOrMany<Condition>>()?.0)
                }
                "include" if include.is_none() => {
                    include = Some(m.next_value_seed(IncludeSeed { json: self.json })?)
                }
                "if" | "include" => return Err(A::Error::custom(format!("duplicate key `{key}`"))),
                k => return Err(A::Error::unknown_field(k, &["if", "include"])),
            }
        }
        let conditions = conditions.ok_or_else(|| A::Error::missing_field("if"))?;
        if conditions.is_empty() {
            return Err(A::Error::custom(
                "conditional-include: `if` has no conditions",
            ));
        }
        let include = include.ok_or_else(|| A::Error::missing_field("include"))?;
        Ok(CondInclude {
            conditions,
            include,
        })
    }
}

/// A conditional `include`: a path, a list of paths, or an inline treefile.
struct IncludeSeed {
    json: bool,
}

impl<'de> DeserializeSeed<'de> for IncludeSeed {
    type Value = IncludeSpec;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IncludeSeed {
    type Value = IncludeSpec;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a path, a list of paths, or an inline treefile")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<IncludeSpec, E> {
        Ok(IncludeSpec::Files(vec![s.to_string()]))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IncludeSpec, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = seq.next_element::<String>()? {
            v.push(x);
        }
        Ok(IncludeSpec::Files(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<IncludeSpec, A::Error> {
        let inline = TreefileVisitor { json: self.json }.visit_map(m)?;
        Ok(IncludeSpec::Inline(Box::new(inline)))
    }
}
