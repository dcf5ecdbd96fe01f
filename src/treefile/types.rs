//! Value types of treefile fields, and how each one reads and writes.
//!
//! Values that name a file ([`AddFile`], [`ExternalFile`]) keep the name as written
//! (that is what is serialized, hence hashed: the checksum must not depend on where
//! the config is checked out) and the absolute path resolved against the directory of
//! the file that declared them.

use std::fmt;

use camino::Utf8PathBuf;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// `edition`: `2024` flips some defaults (see [`super::Treefile::boot_location_or_default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Edition {
    #[serde(rename = "2014")]
    E2014,
    #[serde(rename = "2024")]
    E2024,
}

impl<'de> Deserialize<'de> for Edition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Edition;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"edition "2014" or "2024""#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Edition, E> {
                match s {
                    "2014" => Ok(Edition::E2014),
                    "2024" => Ok(Edition::E2024),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }
            // YAML `edition: 2024` is an integer.
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Edition, E> {
                match n {
                    2014 => Ok(Edition::E2014),
                    2024 => Ok(Edition::E2024),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(n), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Edition, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(n), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `boot-location`: where the kernel and initramfs are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootLocation {
    New,
    Modules,
    KernelInstall,
}

/// `releasever`: a string or a non-negative integer, kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ReleaseVer {
    Number(u64),
    String(String),
}

impl<'de> Deserialize<'de> for ReleaseVer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ReleaseVer;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a non-negative integer")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ReleaseVer, E> {
                Ok(ReleaseVer::Number(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ReleaseVer, E> {
                u64::try_from(n)
                    .map(ReleaseVer::Number)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ReleaseVer, E> {
                Ok(ReleaseVer::String(s.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for ReleaseVer {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ReleaseVer::Number(n) => write!(f, "{n}"),
            ReleaseVer::String(s) => f.write_str(s),
        }
    }
}

impl From<ReleaseVer> for VarValue {
    fn from(r: ReleaseVer) -> Self {
        match r {
            ReleaseVer::Number(n) => VarValue::Number(n),
            ReleaseVer::String(s) => VarValue::String(s),
        }
    }
}

/// The value of a variable (`variables`, `basearch`, `releasever`): conditions compare
/// these, `${var}` substitution renders them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum VarValue {
    Bool(bool),
    Number(u64),
    String(String),
}

impl VarValue {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            VarValue::Bool(_) => "a boolean",
            VarValue::Number(_) => "a number",
            VarValue::String(_) => "a string",
        }
    }
}

impl fmt::Display for VarValue {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            VarValue::Bool(b) => write!(f, "{b}"),
            VarValue::Number(n) => write!(f, "{n}"),
            VarValue::String(s) => f.write_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for VarValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = VarValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a non-negative integer or a boolean")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<VarValue, E> {
                Ok(VarValue::Bool(b))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<VarValue, E> {
                Ok(VarValue::Number(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<VarValue, E> {
                u64::try_from(n)
                    .map(VarValue::Number)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<VarValue, E> {
                Ok(VarValue::String(s.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A file the treefile references: the name as written and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalFile {
    /// As written in the treefile, relative to the file that declared it.
    pub name: String,
    /// Absolute path.
    pub path: Utf8PathBuf,
}

impl Serialize for ExternalFile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

/// One `add-files` entry: copy `src` (beside the declaring treefile) to `dest` in the tree.
/// Serialized as rpm-ostree writes it, `[src, dest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFile {
    /// The source as written (relative to the declaring treefile).
    pub src: String,
    /// The source, absolute.
    pub src_path: Utf8PathBuf,
    /// Absolute destination in the tree, under `/usr` or `/etc`.
    pub dest: String,
}

impl Serialize for AddFile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.src, &self.dest).serialize(s)
    }
}

/// One `repo-packages` entry: packages that must come from `repo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoPackages {
    pub repo: String,
    pub packages: Vec<String>,
}

/// One `remove-from-packages` entry: delete files of `package` whose paths match any of
/// `patterns` (regular expressions, as rpm-ostree interprets them).
/// Serialized as rpm-ostree writes it, `[package, pattern...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveFromPackage {
    pub package: String,
    pub patterns: Vec<String>,
}

impl<'de> Deserialize<'de> for RemoveFromPackage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut it = Vec::<String>::deserialize(d)?.into_iter();
        let package = it.next().unwrap_or_default();
        let patterns: Vec<String> = it.collect();
        if package.is_empty() || patterns.is_empty() {
            return Err(de::Error::custom(
                "a remove-from-packages entry is [package, regex, ...] with at least one regex",
            ));
        }
        Ok(RemoveFromPackage { package, patterns })
    }
}

impl Serialize for RemoveFromPackage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(1 + self.patterns.len()))?;
        seq.serialize_element(&self.package)?;
        for p in &self.patterns {
            seq.serialize_element(p)?;
        }
        seq.end()
    }
}
