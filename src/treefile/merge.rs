//! Merging an included treefile into the one that includes it (rpm-ostree's rules).
//!
//! - Scalars: the includer's value wins; an included value only fills an unset field.
//! - Lists: the included entries come first (`included ++ includer`).
//! - Maps: union; the includer wins on a duplicate key.
//!
//! Includes are merged one after another into the includer, each one *prepending*
//! its lists. So with `include: [a, b]` the result is `b ++ a ++ own`: the later
//! include's entries come before the earlier one's, and the including file's own come
//! last. For `postprocess` this is rpm-ostree's documented execution order (included
//! scripts first, later includes before earlier ones, own scripts last); every other
//! list gets the same order, as in rpm-ostree.

use std::collections::BTreeMap;

use super::Treefile;

fn scalar<T>(dest: &mut Option<T>, src: Option<T>) {
    if dest.is_none() {
        *dest = src;
    }
}

fn list<T>(dest: &mut Vec<T>, mut src: Vec<T>) {
    src.append(dest);
    *dest = src;
}

fn opt_list<T>(dest: &mut Option<Vec<T>>, src: Option<Vec<T>>) {
    match (dest.as_mut(), src) {
        (Some(d), Some(s)) => list(d, s),
        (None, s) => *dest = s,
        (Some(_), None) => {}
    }
}

fn map<V>(dest: &mut BTreeMap<String, V>, mut src: BTreeMap<String, V>) {
    // `append` moves dest's entries into src, replacing src's on equal keys.
    src.append(dest);
    *dest = src;
}

/// Merge `src` (an included treefile) into `dest` (the one including it).
pub(crate) fn merge(dest: &mut Treefile, src: Treefile) {
    // Destructured without `..`: a new field does not compile until it is merged here.
    let Treefile {
        edition,
        ostree_ref,
        basearch: _,  // set once, after loading
        variables: _, // accumulated while loading (conditions need them early)
        releasever,
        repos,
        packages,
        exclude_packages,
        repo_packages,
        add_files,
        remove_files,
        remove_from_packages,
        postprocess,
        postprocess_script,
        automatic_version_prefix,
        automatic_version_suffix,
        mutate_os_release,
        add_commit_metadata,
        units,
        default_target,
        machineid_compat,
        boot_location,
        recommends,
        documentation,
        initramfs_args,
        selinux,
        metadata,
    } = src;
    if dest.ostree_ref.is_empty() {
        dest.ostree_ref = ostree_ref;
    }
    scalar(&mut dest.edition, edition);
    scalar(&mut dest.releasever, releasever);
    opt_list(&mut dest.repos, repos);
    list(&mut dest.packages, packages);
    list(&mut dest.exclude_packages, exclude_packages);
    list(&mut dest.repo_packages, repo_packages);
    list(&mut dest.add_files, add_files);
    list(&mut dest.remove_files, remove_files);
    list(&mut dest.remove_from_packages, remove_from_packages);
    list(&mut dest.postprocess, postprocess);
    scalar(&mut dest.postprocess_script, postprocess_script);
    scalar(&mut dest.automatic_version_prefix, automatic_version_prefix);
    scalar(&mut dest.automatic_version_suffix, automatic_version_suffix);
    scalar(&mut dest.mutate_os_release, mutate_os_release);
    map(&mut dest.add_commit_metadata, add_commit_metadata);
    list(&mut dest.units, units);
    scalar(&mut dest.default_target, default_target);
    scalar(&mut dest.machineid_compat, machineid_compat);
    scalar(&mut dest.boot_location, boot_location);
    scalar(&mut dest.recommends, recommends);
    scalar(&mut dest.documentation, documentation);
    list(&mut dest.initramfs_args, initramfs_args);
    scalar(&mut dest.selinux, selinux);
    map(&mut dest.metadata, metadata);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tf(pkgs: &[&str], script: &str, target: Option<&str>, meta: &[(&str, i32)]) -> Treefile {
        Treefile {
            packages: pkgs.iter().map(|s| s.to_string()).collect(),
            postprocess: vec![script.to_string()],
            default_target: target.map(str::to_string),
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn includer_wins_and_later_includes_come_first() {
        let mut own = tf(&["own"], "own", None, &[("k", 1)]);
        merge(
            &mut own,
            tf(&["a"], "a", Some("a.target"), &[("k", 2), ("a", 2)]),
        );
        merge(&mut own, tf(&["b"], "b", Some("b.target"), &[("b", 3)]));
        assert_eq!(own.postprocess, ["b", "a", "own"]);
        assert_eq!(own.packages, ["b", "a", "own"]);
        // the first include filled the unset scalar; the second could not override it
        assert_eq!(own.default_target.as_deref(), Some("a.target"));
        assert_eq!(own.metadata["k"], 1);
        assert_eq!(
            (own.metadata["a"].clone(), own.metadata["b"].clone()),
            (2.into(), 3.into())
        );

        let mut repos = Some(vec!["own".to_string()]);
        opt_list(&mut repos, None);
        opt_list(&mut repos, Some(vec!["inc".to_string()]));
        assert_eq!(repos, Some(vec!["inc".to_string(), "own".to_string()]));
        let mut none = None;
        opt_list::<String>(&mut none, Some(vec![]));
        assert_eq!(none, Some(vec![]), "an explicit empty repos list is kept");
    }
}
