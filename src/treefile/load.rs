//! Reading treefiles and resolving their includes, depth first.
//!
//! For each file, in this order: parse; refuse unknown keys; check the values that can
//! be checked alone (with the file and line); fold its `variables` and `releasever`
//! into those seen so far (the first seen wins, so the includer wins); split its
//! `packages` (+ `packages-<basearch>`); resolve its file references beside it; load
//! `include` then `arch-include` files; evaluate `conditional-include` (which
//! therefore sees variables from those includes too, a superset of rpm-ostree, which
//! evaluates before loading them); then merge, in rpm-ostree's order: inline
//! conditional treefiles, `include`, `arch-include`, conditional files.
//!
//! Every file may appear once in the whole tree. Identity is (device, inode), so a
//! symlink or a `dir/../` path to an already included file is still caught.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use anyhow::{Context, Result, bail};
use camino::{Utf8Component, Utf8Path, Utf8PathBuf};

use super::Treefile;
use super::merge::merge;
use super::raw::{IncludeSpec, Pos, RawDoc, RawTreefile, unknown_key_message};
use super::text::split_packages;
use super::types::{AddFile, ReleaseVer, VarValue};
use crate::parse::{MAX_YAML_BYTES, ParseError, json_from_slice, read_limited, yaml_from_str};

/// rpm-ostree's limit on include nesting.
pub const MAX_INCLUDE_DEPTH: u32 = 50;

/// Variables the loader sets itself; `variables` may not define them.
const RESERVED_VARIABLES: [&str; 2] = ["basearch", "releasever"];

/// Keys an inline treefile (in `conditional-include`) may not use: they reference files.
const NOT_INLINE: [&str; 5] = [
    "include",
    "arch-include",
    "conditional-include",
    "add-files",
    "postprocess-script",
];

type FileId = (u64, u64);

/// A `file:line:col: message` error.
pub(crate) fn error_at(
    file: &Utf8Path,
    pos: Option<Pos>,
    message: impl Into<String>,
) -> anyhow::Error {
    ParseError {
        file: file.to_string(),
        line: pos.map(|p| p.line),
        column: pos.map(|p| p.column),
        message: message.into(),
    }
    .into()
}

pub(crate) struct Loader<'a> {
    basearch: &'a str,
    seen: HashMap<FileId, Utf8PathBuf>,
    /// The files being loaded, outermost first (to describe a cycle).
    stack: Vec<(FileId, Utf8PathBuf)>,
    /// User variables seen so far; the first definition wins.
    pub(crate) vars: BTreeMap<String, VarValue>,
    releasever: Option<ReleaseVer>,
}

impl<'a> Loader<'a> {
    pub(crate) fn new(basearch: &'a str) -> Self {
        Loader {
            basearch,
            seen: HashMap::new(),
            stack: Vec::new(),
            vars: BTreeMap::new(),
            releasever: None,
        }
    }

    /// Load `path` (absolute) and everything it includes, merged.
    pub(crate) fn load(&mut self, path: &Utf8Path, depth: u32) -> Result<Treefile> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading treefile {path}"))?;
        if !meta.is_file() {
            bail!("treefile {path} is not a regular file");
        }
        let id = (meta.dev(), meta.ino());
        if let Some(i) = self.stack.iter().position(|(sid, _)| *sid == id) {
            let chain: Vec<&str> = (self.stack.iter().skip(i).map(|(_, p)| p.as_str()))
                .chain([path.as_str()])
                .collect();
            bail!("include cycle: {}", chain.join(" includes "));
        }
        if let Some(first) = self.seen.get(&id) {
            bail!("{path} is included twice (first as {first}); a treefile may appear only once");
        }
        self.seen.insert(id, path.to_owned());
        self.stack.push((id, path.to_owned()));
        let raw = parse_file(path)?;
        let tf = self.process(raw, path, depth, false)?;
        self.stack.pop();
        Ok(tf)
    }

    fn lookup(&self, name: &str) -> Option<VarValue> {
        match name {
            "basearch" => Some(VarValue::String(self.basearch.to_string())),
            "releasever" => self.releasever.clone().map(Into::into),
            _ => self.vars.get(name).cloned(),
        }
    }

    /// Flatten one document declared in `file` (the file itself, or an inline
    /// conditional treefile in it).
    fn process(
        &mut self,
        raw: RawTreefile,
        file: &Utf8Path,
        depth: u32,
        inline: bool,
    ) -> Result<Treefile> {
        check_document(&raw, file, inline)?;
        let RawTreefile {
            mut body,
            include,
            mut arch_include,
            conditional_include,
            mut arch_packages,
            keys,
            unknown: _,
        } = raw;
        let pos = |key: &str| keys.iter().find(|(k, _)| k == key).and_then(|(_, p)| *p);
        let dir = file
            .parent()
            .with_context(|| format!("{file} has no parent directory"))?;

        for (k, v) in std::mem::take(&mut body.variables) {
            self.vars.entry(k).or_insert(v);
        }
        if self.releasever.is_none() {
            self.releasever = body.releasever.clone();
        }

        let mut entries = std::mem::take(&mut body.packages);
        entries.extend(arch_packages.remove(self.basearch).unwrap_or_default());
        body.packages = split_all(&entries).map_err(|e| error_at(file, pos("packages"), e))?;
        for rp in &mut body.repo_packages {
            rp.packages =
                split_all(&rp.packages).map_err(|e| error_at(file, pos("repo-packages"), e))?;
        }

        for af in &mut body.add_files {
            af.src_path =
                add_file_source(dir, af).map_err(|e| error_at(file, pos("add-files"), e))?;
        }
        if let Some(script) = &mut body.postprocess_script {
            script.path = postprocess_script(dir, &script.name)
                .map_err(|e| error_at(file, pos("postprocess-script"), e))?;
        }

        let mut includes: Vec<(&str, String)> =
            include.into_iter().map(|n| ("include", n)).collect();
        if let Some(v) = arch_include.remove(self.basearch) {
            includes.extend(v.into_iter().map(|n| ("arch-include", n)));
        }
        let mut included = Vec::new();
        for (key, name) in includes {
            included.push(self.include(file, pos(key), dir, key, &name, depth)?);
        }

        let mut cond_files = Vec::new();
        let mut inlines = Vec::new();
        for ci in conditional_include {
            let mut all = true;
            // Evaluate every condition, so a bad one is reported even after a false one.
            for c in &ci.conditions {
                let ok = c.evaluate(|n| self.lookup(n)).map_err(|e| {
                    error_at(
                        file,
                        pos("conditional-include"),
                        format!("conditional-include: {e}"),
                    )
                })?;
                all &= ok;
            }
            match ci.include {
                IncludeSpec::Files(v) if all => cond_files.extend(v),
                IncludeSpec::Inline(raw) if all => inlines.push(*raw),
                // Checked even when not used: it is part of this file.
                IncludeSpec::Inline(raw) => check_document(&raw, file, true)?,
                IncludeSpec::Files(_) => {}
            }
        }

        for raw in inlines {
            let t = self.process(raw, file, depth, true)?;
            merge(&mut body, t);
        }
        for t in included {
            merge(&mut body, t);
        }
        for name in cond_files {
            let key = "conditional-include";
            let t = self.include(file, pos(key), dir, key, &name, depth)?;
            merge(&mut body, t);
        }
        Ok(body)
    }

    fn include(
        &mut self,
        from: &Utf8Path,
        at: Option<Pos>,
        dir: &Utf8Path,
        key: &str,
        name: &str,
        depth: u32,
    ) -> Result<Treefile> {
        if name.is_empty() {
            return Err(error_at(from, at, format!("{key}: empty file name")));
        }
        if depth >= MAX_INCLUDE_DEPTH {
            let msg =
                format!("{key} {name}: includes are nested more than {MAX_INCLUDE_DEPTH} deep");
            return Err(error_at(from, at, msg));
        }
        let path = dir.join(name);
        if let Err(e) = std::fs::metadata(&path) {
            return Err(error_at(
                from,
                at,
                format!("{key} {name}: cannot read {path}: {e}"),
            ));
        }
        self.load(&path, depth + 1)
    }
}

fn parse_file(path: &Utf8Path) -> Result<RawTreefile> {
    let bytes = read_limited(path, MAX_YAML_BYTES)?;
    if path.extension() == Some("json") {
        return Ok(json_from_slice::<RawDoc<true>>(&bytes, path.as_str())?.0);
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        error_at(
            path,
            None,
            format!("not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    Ok(yaml_from_str::<RawDoc<false>>(text, path.as_str())?.0)
}

fn split_all(entries: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for e in entries {
        out.extend(split_packages(e)?);
    }
    Ok(out)
}

/// Refuse unknown keys (and, in an inline treefile, keys that reference files), then
/// check the values.
fn check_document(raw: &RawTreefile, file: &Utf8Path, inline: bool) -> Result<()> {
    if let Some((key, pos)) = raw.unknown.first() {
        return Err(error_at(file, *pos, unknown_key_message(key)));
    }
    if inline && let Some(key) = NOT_INLINE.iter().find(|k| raw.has(k)) {
        return Err(error_at(
            file,
            raw.pos(key),
            format!("`{key}` cannot be used in an inline conditional-include treefile"),
        ));
    }
    check_values(raw, file)
}

/// Checks on one document's values that need nothing else.
fn check_values(raw: &RawTreefile, file: &Utf8Path) -> Result<()> {
    let b = &raw.body;
    let bad = |key: &str, msg: String| Err(error_at(file, raw.pos(key), format!("{key}: {msg}")));
    if raw.has("ref") && b.ostree_ref.is_empty() {
        return bad("ref", "must not be empty".into());
    }
    if let Some(r) = RESERVED_VARIABLES
        .iter()
        .find(|r| b.variables.contains_key(**r))
    {
        return bad(
            "variables",
            format!("`{r}` is reserved (it is set automatically)"),
        );
    }
    if let Some(s) = &b.automatic_version_suffix
        && !(s.len() == 1 && s.is_ascii())
    {
        return bad(
            "automatic-version-suffix",
            format!("{s:?} is not exactly one ASCII character"),
        );
    }
    for af in &b.add_files {
        if let Err(e) = check_add_file_dest(&af.dest) {
            return bad("add-files", e);
        }
    }
    Ok(())
}

/// Resolve an add-files source: relative, no `..`, a regular file beside the treefile.
fn add_file_source(dir: &Utf8Path, af: &AddFile) -> Result<Utf8PathBuf, String> {
    let src = Utf8Path::new(&af.src);
    if af.src.is_empty()
        || src.is_absolute()
        || src.components().any(|c| c == Utf8Component::ParentDir)
    {
        return Err(format!(
            "add-files: source {:?} must be a relative path without `..`, beside the treefile",
            af.src
        ));
    }
    let path = dir.join(src);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(format!("add-files: source {path} is not a regular file")),
        Err(e) => Err(format!("add-files: source {path}: {e}")),
    }
}

fn check_add_file_dest(dest: &str) -> Result<(), String> {
    let p = Utf8Path::new(dest);
    let normal: Vec<&str> = (p.components())
        .filter_map(|c| match c {
            Utf8Component::Normal(s) => Some(s),
            _ => None,
        })
        .collect();
    let ok = p.is_absolute()
        && !p.components().any(|c| c == Utf8Component::ParentDir)
        && normal.len() >= 2
        && matches!(normal.first(), Some(&"usr") | Some(&"etc"))
        && !(normal.first() == Some(&"usr") && normal.get(1) == Some(&"local"));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "destination {dest:?} must be an absolute path under /usr or /etc \
             (not /usr/local, no `..`)"
        ))
    }
}

fn postprocess_script(dir: &Utf8Path, name: &str) -> Result<Utf8PathBuf, String> {
    if name.is_empty() {
        return Err("postprocess-script: empty file name".into());
    }
    let path = dir.join(name);
    match std::fs::metadata(&path) {
        Ok(m) if !m.is_file() => Err(format!("postprocess-script {path} is not a regular file")),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err(format!("postprocess-script {path} is not executable"))
        }
        Ok(_) => Ok(path),
        Err(e) => Err(format!("postprocess-script {path}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_files_destinations() {
        let ok = ["/usr/lib/foo", "/etc/motd", "/usr/share/a/b", "//usr/x"];
        let bad = [
            "usr/lib/foo",
            "/usr",
            "/etc",
            "/",
            "/var/lib/x",
            "/usr/local/bin/x",
            "/usr/../var/x",
            "/opt/x",
            "",
        ];
        for d in ok {
            assert!(check_add_file_dest(d).is_ok(), "{d}");
        }
        for d in bad {
            assert!(check_add_file_dest(d).is_err(), "{d}");
        }
    }
}
