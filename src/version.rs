//! Build versions, with rpm-ostree's `automatic-version-prefix` semantics.
//!
//! Given a prefix `P` (after expanding `<date:FORMAT>`), a one-character suffix `S`
//! (default `.`) and the previous build's version `L`:
//! - `L` absent, or not starting with `P`: the version is `P` (or `P S 0` when the
//!   prefix has a date: a date implies a trailing counter that restarts each day);
//! - `L == P`: `P S 1`;
//! - `L == P S N` with `N` a number: `P S (N+1)`;
//! - anything else after `P` (another component, a non-number): `P` again, as for a
//!   foreign version (with `S 0` when dated).
//!
//! So `22` gives 22, 22.1, 22.2 and `22.<date:%Y>` gives 22.2019.0, 22.2019.1,
//! then 22.2020.0 when the year turns.

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};

/// The prefix with every `<date:FORMAT>` expanded (strftime-style FORMAT, as GLib's
/// `g_date_time_format`, in UTC); returns whether a date was present.
pub fn expand_prefix(prefix: &str, now: DateTime<Utc>) -> Result<(String, bool)> {
    let mut out = String::new();
    let mut rest = prefix;
    let mut dated = false;
    while let Some(start) = rest.find("<date:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "<date:".len()..];
        let Some(end) = after.find('>') else {
            bail!("automatic-version-prefix {prefix:?}: unterminated <date:...>");
        };
        let fmt = &after[..end];
        let items: Vec<_> = chrono::format::StrftimeItems::new(fmt).collect();
        if items
            .iter()
            .any(|i| matches!(i, chrono::format::Item::Error))
            || fmt.is_empty()
        {
            bail!("automatic-version-prefix {prefix:?}: invalid date format {fmt:?}");
        }
        // Some specifiers parse but cannot format (`%#z`): an error, not a panic.
        std::fmt::Write::write_fmt(
            &mut out,
            format_args!("{}", now.format_with_items(items.into_iter())),
        )
        .map_err(|_| {
            anyhow::anyhow!(
                "automatic-version-prefix {prefix:?}: cannot format a date with {fmt:?}"
            )
        })?;
        dated = true;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, dated))
}

/// The next version after `last`, per the rules in the module documentation.
pub fn next_version(
    prefix: &str,
    suffix: Option<&str>,
    last: Option<&str>,
    now: DateTime<Utc>,
) -> Result<String> {
    let suffix = suffix.unwrap_or(".");
    let mut chars = suffix.chars();
    let (Some(sep), None) = (chars.next(), chars.next()) else {
        bail!("automatic-version-suffix {suffix:?} must be exactly one character");
    };
    if !sep.is_ascii() {
        bail!("automatic-version-suffix {suffix:?} must be an ASCII character");
    }
    let (p, dated) = expand_prefix(prefix, now)?;
    let fresh = || {
        if dated {
            format!("{p}{sep}0")
        } else {
            p.clone()
        }
    };
    let Some(last) = last else { return Ok(fresh()) };
    let Some(tail) = last.strip_prefix(p.as_str()) else {
        return Ok(fresh());
    };
    if tail.is_empty() {
        return Ok(format!("{p}{sep}1"));
    }
    let Some(num) = tail.strip_prefix(sep) else {
        return Ok(fresh());
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(fresh());
    }
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("previous version {last:?}: counter out of range"))?;
    let n = n
        .checked_add(1)
        .ok_or_else(|| anyhow::anyhow!("previous version {last:?}: counter out of range"))?;
    Ok(format!("{p}{sep}{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0)
            .single()
            .expect("valid date")
    }

    fn progression(prefix: &str, suffix: Option<&str>, dates: &[DateTime<Utc>]) -> Vec<String> {
        let mut last: Option<String> = None;
        dates
            .iter()
            .map(|d| {
                let v = next_version(prefix, suffix, last.as_deref(), *d).expect("version");
                last = Some(v.clone());
                v
            })
            .collect()
    }

    #[test]
    fn plain_prefix_progression() {
        let d = at(2019, 5, 1);
        assert_eq!(progression("22", None, &[d, d, d]), ["22", "22.1", "22.2"]);
    }

    #[test]
    fn dated_prefix_progression_resets_with_the_date() {
        let (a, b) = (at(2019, 5, 1), at(2020, 1, 1));
        assert_eq!(
            progression("22.<date:%Y>", None, &[a, a, b]),
            ["22.2019.0", "22.2019.1", "22.2020.0"]
        );
        assert_eq!(
            progression("1.<date:%Y%m%d>", None, &[a, a, at(2019, 5, 2)]),
            ["1.20190501.0", "1.20190501.1", "1.20190502.0"]
        );
    }

    #[test]
    fn custom_suffix_and_foreign_versions() {
        let d = at(2019, 5, 1);
        assert_eq!(progression("7", Some("-"), &[d, d, d]), ["7", "7-1", "7-2"]);
        assert_eq!(
            next_version("22", None, Some("21.5"), d).ok().as_deref(),
            Some("22")
        );
        assert_eq!(
            next_version("22", None, Some("22.x"), d).ok().as_deref(),
            Some("22")
        );
        assert_eq!(
            next_version("22", None, Some("22.1.1"), d).ok().as_deref(),
            Some("22")
        );
        assert_eq!(
            next_version("22", None, Some("22.9"), d).ok().as_deref(),
            Some("22.10")
        );
        // 220 starts with 22 but is not 22 followed by the suffix.
        assert_eq!(
            next_version("22", None, Some("220"), d).ok().as_deref(),
            Some("22")
        );
    }

    #[test]
    fn bad_prefixes_and_suffixes() {
        let d = at(2019, 5, 1);
        assert!(next_version("1.<date:%Y", None, None, d).is_err());
        assert!(next_version("1.<date:>", None, None, d).is_err());
        // Found by the property tests: chrono's formatter fails on this one.
        assert!(next_version("1.<date:%#z>", None, None, d).is_err());
        assert!(next_version("1", Some(".."), None, d).is_err());
        assert!(next_version("1", Some(""), None, d).is_err());
        assert!(next_version("1", None, Some("1.99999999999999999999999"), d).is_err());
    }
}
