//! RPM-MD repositories: the `.repo` files beside the treefile (never the host's),
//! the sections a treefile selects, and each repository's `repomd.xml`.

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};

/// One `[id]` section of a `.repo` file, its keys kept verbatim for dnf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub id: String,
    pub file: Utf8PathBuf,
    pub keys: Vec<(String, String)>,
}

impl Repo {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn enabled(&self) -> bool {
        !matches!(self.get("enabled"), Some("0" | "false" | "False" | "no"))
    }

    /// The first `baseurl`, with `$releasever`/`$basearch` substituted.
    pub fn baseurl(&self, releasever: &str, basearch: &str) -> Option<String> {
        let b = self.get("baseurl")?;
        let first = b.split([' ', ',', '\n', '\t']).find(|s| !s.is_empty())?;
        Some(
            first
                .replace("${releasever}", releasever)
                .replace("$releasever", releasever)
                .replace("${basearch}", basearch)
                .replace("$basearch", basearch),
        )
    }
}

/// Parse one `.repo` file (INI: `[section]`, `key=value`, `#`/`;` comments).
pub fn parse_repo_file(text: &str, file: &Utf8Path) -> Result<Vec<Repo>> {
    let mut repos: Vec<Repo> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(id) = rest.strip_suffix(']') else {
                bail!("{file}:{}: unterminated section header", n + 1);
            };
            let id = id.trim();
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
            {
                bail!("{file}:{}: invalid repository id {id:?}", n + 1);
            }
            repos.push(Repo {
                id: id.to_string(),
                file: file.to_owned(),
                keys: Vec::new(),
            });
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("{file}:{}: expected key=value", n + 1);
        };
        let Some(cur) = repos.last_mut() else {
            bail!("{file}:{}: key outside of a [repository] section", n + 1);
        };
        cur.keys.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(repos)
}

/// All repositories defined by `*.repo` files in `dir`, in file-name order.
pub fn load_dir(dir: &Utf8Path) -> Result<Vec<Repo>> {
    let mut files: Vec<Utf8PathBuf> = Vec::new();
    for ent in std::fs::read_dir(dir).with_context(|| format!("listing {dir}"))? {
        let ent = ent.with_context(|| format!("listing {dir}"))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".repo") {
            files.push(dir.join(name));
        }
    }
    files.sort();
    let mut all: Vec<Repo> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {f}"))?;
        for r in parse_repo_file(&text, &f)? {
            if let Some(prev) = all.iter().find(|p| p.id == r.id) {
                bail!(
                    "repository {} is defined twice ({} and {})",
                    r.id,
                    prev.file,
                    r.file
                );
            }
            all.push(r);
        }
    }
    Ok(all)
}

/// The repositories a treefile uses: those named in `repos` (each must exist), or every
/// enabled one when the treefile names none.
pub fn select(all: Vec<Repo>, wanted: Option<&[String]>, dir: &Utf8Path) -> Result<Vec<Repo>> {
    let picked: Vec<Repo> = match wanted {
        Some(ids) => {
            let mut out = Vec::new();
            for id in ids {
                match all.iter().find(|r| &r.id == id) {
                    Some(r) => out.push(r.clone()),
                    None => bail!(
                        "repository {id:?} (treefile `repos`) is not defined in any .repo file in {dir}"
                    ),
                }
            }
            out
        }
        None => all.into_iter().filter(Repo::enabled).collect(),
    };
    if picked.is_empty() {
        bail!("no repositories: add a .repo file to {dir}");
    }
    Ok(picked)
}

/// Write the selected repositories, enabled, as the only `.repo` file of a fresh reposdir.
pub fn write_reposdir(dir: &Utf8Path, repos: &[Repo]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    let mut text = String::new();
    for r in repos {
        text.push_str(&format!("[{}]\n", r.id));
        for (k, v) in &r.keys {
            if k != "enabled" {
                text.push_str(&format!("{k}={v}\n"));
            }
        }
        text.push_str("enabled=1\n\n");
    }
    crate::fsutil::atomic_write(&dir.join("cosa.repo"), text.as_bytes())
}

/// Fetch `repomd.xml` of a repository: one small request; the fast path of change detection.
pub fn fetch_repomd(baseurl: &str) -> Result<Vec<u8>> {
    let url = format!("{}/repodata/repomd.xml", baseurl.trim_end_matches('/'));
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read(path).with_context(|| format!("reading {url}"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("repository URL {baseurl:?}: only file://, http:// and https:// are supported");
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .context("creating an HTTP client")?;
    let mut last = None;
    for attempt in 0..3u32 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(500 << attempt));
        }
        match client.get(&url).send().and_then(|r| r.error_for_status()) {
            Ok(r) => {
                return Ok(r
                    .bytes()
                    .with_context(|| format!("reading {url}"))?
                    .to_vec());
            }
            Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                return Err(e).with_context(|| format!("fetching {url}"));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "fetching {url}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// sha256 of each repository's repomd.xml, or `None` when one has no plain baseurl
/// (metalink/mirrorlist): then change detection must depsolve.
pub fn repomd_state(
    repos: &[Repo],
    releasever: &str,
    basearch: &str,
) -> Result<Option<Vec<(String, String)>>> {
    let mut out = Vec::new();
    for r in repos {
        let Some(url) = r.baseurl(releasever, basearch) else {
            return Ok(None);
        };
        let bytes = fetch_repomd(&url).with_context(|| format!("repository {}", r.id))?;
        out.push((r.id.clone(), hex::encode(Sha256::digest(&bytes))));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_select() -> Result<()> {
        let f = Utf8Path::new("x.repo");
        let repos = parse_repo_file(
            "# c\n[a]\nname=A\nbaseurl=http://h/$releasever/$basearch/ http://mirror\n\n[b]\nbaseurl=file:///r\nenabled=0\n",
            f,
        )?;
        assert_eq!(repos.len(), 2);
        assert_eq!(
            repos[0].baseurl("39", "x86_64").as_deref(),
            Some("http://h/39/x86_64/")
        );
        let sel = select(repos.clone(), None, Utf8Path::new("d"))?;
        assert_eq!(sel.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a"]);
        let sel = select(repos.clone(), Some(&["b".to_string()]), Utf8Path::new("d"))?;
        assert_eq!(sel[0].id, "b");
        let e = select(repos, Some(&["zz".to_string()]), Utf8Path::new("d")).unwrap_err();
        assert!(e.to_string().contains("\"zz\""), "{e}");
        assert!(parse_repo_file("key=v\n", f).is_err());
        assert!(
            parse_repo_file("[a\n", f)
                .unwrap_err()
                .to_string()
                .starts_with("x.repo:1:")
        );
        assert!(parse_repo_file("[a/../b]\n", f).is_err());
        Ok(())
    }
}
