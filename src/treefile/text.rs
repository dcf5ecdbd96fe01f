//! String rules of treefiles: package-list splitting and `${var}` substitution.

/// Split one `packages` entry the way rpm-ostree does: on white space, except that a
/// single-quoted part stays one entry (`"foo 'podman >= 4.1'"` is `foo` and
/// `podman >= 4.1`). A quote also ends the word before it.
pub(crate) fn split_packages(entry: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = entry;
    while let Some((before, after)) = rest.split_once('\'') {
        out.extend(before.split_whitespace().map(str::to_string));
        let Some((quoted, tail)) = after.split_once('\'') else {
            return Err(format!("package entry {entry:?}: missing closing quote"));
        };
        let query = quoted.trim();
        if query.is_empty() {
            return Err(format!("package entry {entry:?}: empty quoted package"));
        }
        out.push(query.to_string());
        rest = tail;
    }
    out.extend(rest.split_whitespace().map(str::to_string));
    Ok(out)
}

/// Replace every `${name}` in `s` by `lookup(name)`. `$` not followed by `{` is kept.
/// An unknown or unterminated reference is an error naming it.
pub(crate) fn substitute(
    s: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((before, after)) = rest.split_once("${") {
        out.push_str(before);
        let Some((name, tail)) = after.split_once('}') else {
            return Err(format!("unterminated `${{` in {s:?}"));
        };
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("unknown variable `${{{name}}}` in {s:?}")),
        }
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_packages_except_quoted() {
        let cases: &[(&str, &[&str])] = &[
            ("foo", &["foo"]),
            ("  foo   bar\tbaz ", &["foo", "bar", "baz"]),
            ("corge 'quuz >= 1.0'", &["corge", "quuz >= 1.0"]),
            ("'podman >= 4.1'", &["podman >= 4.1"]),
            ("a 'b < 2' c 'd > 3'", &["a", "b < 2", "c", "d > 3"]),
            ("x'y z'", &["x", "y z"]),
            ("", &[]),
            ("héllo wörld", &["héllo", "wörld"]),
        ];
        for (entry, want) in cases {
            assert_eq!(split_packages(entry).unwrap(), *want, "{entry:?}");
        }
        for bad in ["'unterminated", "a 'b' 'c", "''", "' '"] {
            assert!(split_packages(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn substitutes_known_variables_only() {
        let lookup = |n: &str| match n {
            "basearch" => Some("x86_64".to_string()),
            "releasever" => Some("40".to_string()),
            _ => None,
        };
        let ok = [
            (
                "fedora/${releasever}/${basearch}/coreos",
                "fedora/40/x86_64/coreos",
            ),
            ("no vars", "no vars"),
            ("$basearch stays", "$basearch stays"),
            ("cost: $5", "cost: $5"),
            ("${basearch}${basearch}", "x86_64x86_64"),
        ];
        for (s, want) in ok {
            assert_eq!(substitute(s, &lookup).unwrap(), want, "{s}");
        }
        let e = substitute("a/${stream}/b", &lookup).unwrap_err();
        assert!(e.contains("${stream}"), "{e}");
        assert!(substitute("a/${basearch", &lookup).is_err());
        assert!(substitute("${}", &lookup).is_err());
    }
}
