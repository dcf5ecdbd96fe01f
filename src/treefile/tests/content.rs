//! Substitution, packages, referenced files, whole-tree validation, checksums.

use indoc::indoc;

use super::*;

#[test]
fn variable_substitution() {
    let fx = Fx::new();
    fx.write(
        "m.yaml",
        indoc! {r#"
            ref: fedora/${releasever}/${basearch}/${stream}
            releasever: 40
            variables:
              stream: next
              kflavor: debug
            packages:
              - kernel-${kflavor}
              - foo-${stream} bar
            exclude-packages:
              - nano-${basearch}
            automatic-version-prefix: ${releasever}.<date:%Y%m%d>
            mutate-os-release: ${releasever}
            add-commit-metadata:
              stream: ${stream}
              count: 3
        "#},
    );
    let tf = fx.load("m.yaml");
    assert_eq!(tf.ostree_ref, "fedora/40/x86_64/next");
    assert_eq!(tf.packages(), ["kernel-debug", "foo-next", "bar"]);
    assert_eq!(tf.exclude_packages, ["nano-x86_64"]);
    assert_eq!(
        tf.automatic_version_prefix.as_deref(),
        Some("40.<date:%Y%m%d>")
    );
    assert_eq!(tf.mutate_os_release.as_deref(), Some("40"));
    assert_eq!(tf.add_commit_metadata["stream"], "next");
    assert_eq!(tf.add_commit_metadata["count"], 3);

    // releasever as a string
    fx.write(
        "s.yaml",
        "ref: f/${releasever}\nreleasever: \"rawhide\"\npackages: [k]\n",
    );
    let tf = fx.load("s.yaml");
    assert_eq!(tf.ostree_ref, "f/rawhide");
    assert_eq!(tf.releasever, Some(ReleaseVer::String("rawhide".into())));

    let top = fx.write("u.yaml", "ref: f/${nosuch}\npackages: [k]\n");
    let e = fx.err("u.yaml");
    assert!(
        e.starts_with(top.as_str()) && e.contains("${nosuch}"),
        "{e}"
    );
    // releasever unset: `${releasever}` is unknown
    fx.write("n.yaml", "ref: f/${releasever}\npackages: [k]\n");
    assert!(fx.err("n.yaml").contains("${releasever}"));
}

#[test]
fn packages_split_quote_dedup_and_arch() {
    let fx = Fx::new();
    fx.write(
        "m.yaml",
        indoc! {"
            ref: r
            include: inc.yaml
            packages:
              - foo bar
              - corge 'podman >= 4.1'
              - foo
            packages-x86_64:
              - grub2 shim-x64
            packages-aarch64:
              - shim-aa64
            packages-s390x: [s390utils]
            repo-packages:
              - repo: updates
                packages: [a b]
        "},
    );
    fx.write(
        "inc.yaml",
        "packages: [bar baz]\npackages-x86_64: [microcode_ctl]\n",
    );
    let tf = fx.load("m.yaml");
    assert_eq!(
        tf.packages(),
        [
            "bar",
            "baz",
            "microcode_ctl",
            "foo",
            "corge",
            "podman >= 4.1",
            "grub2",
            "shim-x64"
        ]
    );
    assert_eq!(tf.repo_packages[0].packages, ["a", "b"]);
    assert_eq!(
        load(&fx.root.join("m.yaml"), "aarch64")
            .unwrap()
            .packages()
            .last()
            .unwrap(),
        "shim-aa64"
    );

    let file = fx.write("q.yaml", "ref: r\npackages:\n  - \"foo 'bar\"\n");
    let e = fx.err("q.yaml");
    assert!(
        e.starts_with(&format!("{file}:2:")) && e.contains("missing closing quote"),
        "{e}"
    );
}

/// Included manifests' scripts run first, a later include's before an earlier one's,
/// the including manifest's own last (rpm-ostree's documented order).
#[test]
fn postprocess_order_across_includes() {
    let fx = Fx::new();
    fx.write(
        "m.yaml",
        "ref: r\npackages: [k]\ninclude: [first.yaml, second.yaml]\npostprocess: [own-1, own-2]\n",
    );
    fx.write(
        "first.yaml",
        "include: first-base.yaml\npostprocess: [first]\n",
    );
    fx.write("first-base.yaml", "postprocess: [first-base]\n");
    fx.write("second.yaml", "postprocess: [second-1, second-2]\n");
    let tf = fx.load("m.yaml");
    assert_eq!(
        tf.postprocess,
        [
            "second-1",
            "second-2",
            "first-base",
            "first",
            "own-1",
            "own-2"
        ]
    );
}

#[test]
fn add_files_are_checked() {
    let fx = Fx::new();
    fx.write("files/motd", "hi\n");
    std::fs::create_dir_all(fx.root.join("adir")).unwrap();
    fx.write("../outside", "x\n");
    let cases = [
        ("[missing, /etc/motd]", "missing"),
        ("[../outside, /etc/motd]", "without `..`"),
        ("[files/../files/motd, /etc/motd]", "without `..`"),
        ("[/etc/passwd, /etc/motd]", "relative path"),
        ("[adir, /etc/motd]", "not a regular file"),
        (
            "[files/motd, etc/motd]",
            "must be an absolute path under /usr or /etc",
        ),
        ("[files/motd, /var/motd]", "under /usr or /etc"),
        ("[files/motd, /usr/local/bin/x]", "not /usr/local"),
    ];
    for (entry, want) in cases {
        let file = fx.write("m.yaml", &format!("{MINIMAL}add-files:\n  - {entry}\n"));
        let e = fx.err("m.yaml");
        assert!(e.starts_with(&format!("{file}:4:")), "{entry}: {e}");
        assert!(e.contains(want), "{entry}: {e}");
    }

    // Sources resolve beside the file that declares them.
    fx.write("m.yaml", "ref: r\npackages: [k]\ninclude: sub/inc.yaml\n");
    fx.write("sub/inc.yaml", "add-files:\n  - [motd, /etc/motd]\n");
    fx.write("sub/motd", "sub\n");
    let tf = fx.load("m.yaml");
    assert_eq!(tf.add_files[0].src_path, fx.root.join("sub/motd"));
    assert_eq!(
        tf.externals(),
        [("motd".to_string(), fx.root.join("sub/motd"))]
    );
}

#[test]
fn postprocess_script_must_be_an_executable_file() {
    let fx = Fx::new();
    let file = fx.write("m.yaml", &format!("{MINIMAL}postprocess-script: post.sh\n"));
    assert!(fx.err("m.yaml").contains("No such file"));
    fx.write("post.sh", "#!/bin/sh\n");
    let e = fx.err("m.yaml");
    assert!(
        e.starts_with(&format!("{file}:4:")) && e.contains("not executable"),
        "{e}"
    );
    fx.executable("post.sh", "#!/bin/sh\n");
    let tf = fx.load("m.yaml");
    assert_eq!(
        tf.externals(),
        [("post.sh".to_string(), fx.root.join("post.sh"))]
    );
}

#[test]
fn whole_tree_validation() {
    let fx = Fx::new();
    let cases = [
        ("packages: [k]\n", "`ref` is mandatory"),
        ("ref: r\n", "`packages` is mandatory"),
        ("ref: r\npackages: []\n", "`packages` is mandatory"),
        ("ref: \"\"\npackages: [k]\n", "ref: must not be empty"),
        (
            "ref: r\npackages: [k]\nunits: [a.service]\nmachineid-compat: false\n",
            "`units`",
        ),
        (
            "ref: r\npackages: [k]\nautomatic-version-suffix: \"--\"\n",
            "exactly one ASCII",
        ),
        (
            "ref: r\npackages: [k]\nautomatic-version-suffix: \"é\"\n",
            "exactly one ASCII",
        ),
    ];
    for (doc, want) in cases {
        let top = fx.write("m.yaml", doc);
        let e = fx.err("m.yaml");
        assert!(e.starts_with(top.as_str()), "{doc}: {e}");
        assert!(e.contains(want), "{doc}: {e}");
    }
    // mandatory keys may come from includes
    fx.write("m.yaml", "include: base.yaml\n");
    fx.write("base.yaml", MINIMAL);
    assert_eq!(fx.load("m.yaml").ostree_ref, "fedora/x86_64/coreos");
}

#[test]
fn checksum_tracks_semantic_changes_only() {
    let fx = Fx::new();
    fx.write("motd", "hello\n");
    let base = indoc! {"
        ref: r
        packages: [kernel, systemd]
        add-files:
          - [motd, /etc/motd]
        metadata:
          summary: one
    "};
    fx.write("m.yaml", base);
    let sum = || fx.load("m.yaml").checksum().unwrap();
    let original = sum();
    assert_eq!(original.len(), 64);
    assert_eq!(sum(), original, "deterministic");

    // comments, white space, key order, metadata: no change
    let same = [
        "# a comment\nref: r\npackages:   [kernel,   systemd]  # trailing\nadd-files:\n  - [motd, /etc/motd]\n",
        "metadata: {summary: two, extra: [1, 2]}\nadd-files: [[motd, /etc/motd]]\npackages:\n- kernel\n- systemd\nref: r\n",
        "ref: r\npackages: [kernel systemd]\nadd-files:\n  - [motd, /etc/motd]\n",
    ];
    for doc in same {
        fx.write("m.yaml", doc);
        assert_eq!(sum(), original, "{doc}");
    }

    // a package, an add-files source's content, a setting: change
    fx.write("m.yaml", base);
    fx.write("motd", "hello, world\n");
    let content_changed = sum();
    assert_ne!(content_changed, original);
    fx.write("motd", "hello\n");
    assert_eq!(sum(), original);
    fx.write("m.yaml", &base.replace("systemd]", "systemd, vim]"));
    assert_ne!(sum(), original);
    fx.write("m.yaml", &format!("{base}selinux: false\n"));
    assert_ne!(sum(), original);
}

#[test]
fn checksum_does_not_depend_on_the_checkout_location() {
    let docs = [
        (
            "m.yaml",
            "ref: r\npackages: [k]\nadd-files: [[f, /usr/lib/f]]\n",
        ),
        ("f", "x"),
    ];
    let sums: Vec<String> = (0..2)
        .map(|_| {
            let fx = Fx::new();
            for (name, doc) in docs {
                fx.write(name, doc);
            }
            let tf = fx.load("m.yaml");
            assert!(
                !String::from_utf8(tf.canonical_json())
                    .unwrap()
                    .contains(fx.root.as_str())
            );
            tf.checksum().unwrap()
        })
        .collect();
    assert_eq!(sums[0], sums[1]);
}

#[test]
fn canonical_json_is_deterministic() {
    let fx = Fx::new();
    fx.write(
        "a.yaml",
        "ref: r\npackages: [k]\nadd-commit-metadata:\n  z: {b: 1, a: [2, {d: 1, c: 2}]}\n  a: x\nmetadata: {m: 1}\n",
    );
    fx.write(
        "b.json",
        r#"{"add-commit-metadata": {"a": "x", "z": {"a": [2, {"c": 2, "d": 1}], "b": 1}}, "packages": ["k"], "ref": "r"}"#,
    );
    let (a, b) = (fx.load("a.yaml"), fx.load("b.json"));
    assert_eq!(a.canonical_json(), b.canonical_json());
    let json = String::from_utf8(a.canonical_json()).unwrap();
    assert_eq!(
        json,
        r#"{"ref":"r","basearch":"x86_64","packages":["k"],"add-commit-metadata":{"a":"x","z":{"a":[2,{"c":2,"d":1}],"b":1}}}"#
    );
    assert!(
        !json.contains("metadata\":{\"m\""),
        "metadata is left out: {json}"
    );
    assert!(a.to_json_pretty().contains("\"m\": 1"));
}
