//! CI outputs: how a binary tells the CI system what it did.
//!
//! - GitHub Actions: `name=value` lines appended to `$GITHUB_OUTPUT`, log groups with
//!   `::group::`/`::endgroup::`, failures as `::error::` annotations.
//! - GitLab CI: a dotenv report file (`KEY=value` lines; no quoting, no comments),
//!   collapsible log sections with `section_start`/`section_end` markers.
//! - Anywhere else: plain lines.

use std::io::Write;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;

/// The CI system we are running under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ci {
    GitHub,
    GitLab,
    None,
}

impl Ci {
    pub fn detect() -> Self {
        let truthy = |k: &str| std::env::var(k).is_ok_and(|v| v == "true");
        if truthy("GITHUB_ACTIONS") {
            Self::GitHub
        } else if truthy("GITLAB_CI") {
            Self::GitLab
        } else {
            Self::None
        }
    }
}

/// A value that may be written as one `KEY=value` line: no newline, no NUL.
fn check_value(key: &str, value: &str) -> Result<()> {
    if value.contains(['\n', '\r', '\0']) {
        bail!("output {key}: value contains a line break");
    }
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("output name {key:?} is not valid");
    }
    Ok(())
}

/// Append outputs to the file named by `$GITHUB_OUTPUT`, if set. Appending is the
/// protocol: other steps of the job write to the same file.
pub fn github_output(pairs: &[(&str, String)]) -> Result<()> {
    let Some(path) = std::env::var_os("GITHUB_OUTPUT") else {
        return Ok(());
    };
    let mut text = String::new();
    for (k, v) in pairs {
        check_value(k, v)?;
        text.push_str(&format!("{k}={v}\n"));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .with_context(|| format!("opening $GITHUB_OUTPUT ({})", path.to_string_lossy()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing $GITHUB_OUTPUT ({})", path.to_string_lossy()))
}

/// Write a GitLab dotenv report atomically.
pub fn write_dotenv(path: &Utf8Path, pairs: &[(&str, String)]) -> Result<()> {
    let mut text = String::new();
    for (k, v) in pairs {
        check_value(k, v)?;
        text.push_str(&format!("{k}={v}\n"));
    }
    crate::fsutil::atomic_write(path, text.as_bytes())
}

/// Print a log group/section header for `title` on stderr (GitHub, GitLab, or a plain line).
pub fn group_start(ci: Ci, id: &str, title: &str) {
    match ci {
        Ci::GitHub => eprintln!("::group::{title}"),
        Ci::GitLab => eprintln!(
            "\x1b[0Ksection_start:{}:{id}[collapsed=true]\r\x1b[0K{title}",
            chrono::Utc::now().timestamp()
        ),
        Ci::None => eprintln!("==> {title}"),
    }
}

/// Close the group opened by [`group_start`].
pub fn group_end(ci: Ci, id: &str) {
    match ci {
        Ci::GitHub => eprintln!("::endgroup::"),
        Ci::GitLab => eprintln!(
            "\x1b[0Ksection_end:{}:{id}\r\x1b[0K",
            chrono::Utc::now().timestamp()
        ),
        Ci::None => {}
    }
}

/// Escape a message for a GitHub workflow command (`::error::<msg>`).
pub fn github_escape(msg: &str) -> String {
    msg.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Append a Markdown summary of a build to `$GITHUB_STEP_SUMMARY`, if set: its ID,
/// version, commit and an artifact table (file, size, sha256).
pub fn step_summary(title: &str, meta: &crate::meta::Meta) -> Result<()> {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") else {
        return Ok(());
    };
    let mut md = format!(
        "### {title}\n\n| build | version | commit |\n| --- | --- | --- |\n| `{}` | `{}` | `{}` |\n\n",
        meta.buildid,
        meta.ostree_version,
        meta.ostree_commit.get(..12).unwrap_or(&meta.ostree_commit)
    );
    if !meta.images.is_empty() {
        md.push_str("| artifact | file | size | sha256 |\n| --- | --- | ---: | --- |\n");
        for (k, a) in &meta.images {
            let size = a.size.map(human_size).unwrap_or_default();
            md.push_str(&format!(
                "| {k} | `{}` | {size} | `{}` |\n",
                a.path, a.sha256
            ));
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .with_context(|| format!("opening $GITHUB_STEP_SUMMARY ({})", path.to_string_lossy()))?;
    f.write_all(md.as_bytes())
        .with_context(|| format!("writing $GITHUB_STEP_SUMMARY ({})", path.to_string_lossy()))
}

/// `1.5 GiB`-style sizes for people.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_refuses_multiline_values() -> Result<()> {
        let td = tempfile::tempdir()?;
        let p = Utf8Path::from_path(td.path())
            .context("utf8")?
            .join("x.env");
        write_dotenv(&p, &[("A", "1".into()), ("B", "two".into())])?;
        assert_eq!(std::fs::read_to_string(&p)?, "A=1\nB=two\n");
        assert!(write_dotenv(&p, &[("A", "1\nC=3".into())]).is_err());
        assert_eq!(std::fs::read_to_string(&p)?, "A=1\nB=two\n");
        Ok(())
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn escape() {
        assert_eq!(github_escape("a%b\nc"), "a%25b%0Ac");
    }
}
