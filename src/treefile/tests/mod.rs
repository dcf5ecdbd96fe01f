//! Loading tests: fixture trees written into temporary directories.
//!
//! This file: the fixture helper, keys, formats and error reporting; `includes`:
//! include resolution, conditions, variables, merge order; `content`: substitution,
//! packages, referenced files, validation, checksums.

mod content;
mod includes;

use std::os::unix::fs::PermissionsExt;

use camino::{Utf8Path, Utf8PathBuf};
use indoc::indoc;

use super::*;

pub(super) const ARCH: &str = "x86_64";

pub(super) const MINIMAL: &str = indoc! {"
    ref: fedora/x86_64/coreos
    packages:
      - kernel
"};

/// A temporary directory of treefiles.
pub(super) struct Fx {
    _dir: tempfile::TempDir,
    pub(super) root: Utf8PathBuf,
}

impl Fx {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).unwrap();
        Fx { _dir: dir, root }
    }

    pub(super) fn write(&self, rel: &str, content: &str) -> Utf8PathBuf {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    pub(super) fn executable(&self, rel: &str, content: &str) -> Utf8PathBuf {
        let p = self.write(rel, content);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    pub(super) fn load(&self, rel: &str) -> Treefile {
        match load(&self.root.join(rel), ARCH) {
            Ok(t) => t,
            Err(e) => panic!("loading {rel}: {e:#}"),
        }
    }

    pub(super) fn err(&self, rel: &str) -> String {
        match load(&self.root.join(rel), ARCH) {
            Ok(t) => panic!("loading {rel} succeeded: {}", t.to_json_pretty()),
            Err(e) => format!("{e:#}"),
        }
    }

    pub(super) fn path(&self, rel: &str) -> String {
        self.root.join(rel).to_string()
    }
}

pub(super) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn minimal_treefile_and_defaults() {
    let fx = Fx::new();
    fx.write("manifest.yaml", MINIMAL);
    let tf = fx.load("manifest.yaml");
    assert_eq!(tf.ostree_ref, "fedora/x86_64/coreos");
    assert_eq!(tf.packages(), ["kernel"]);
    assert_eq!(tf.basearch, ARCH);
    assert_eq!(tf.repos, None);
    assert!(tf.selinux_enabled() && tf.recommends_enabled() && tf.documentation_enabled());
    assert!(tf.machineid_compat_enabled());
    assert_eq!(tf.boot_location_or_default(), BootLocation::New);
    assert_eq!(tf.automatic_version_suffix_or_default(), '.');
    assert!(tf.externals().is_empty());
    assert_eq!(
        String::from_utf8(tf.canonical_json()).unwrap(),
        r#"{"ref":"fedora/x86_64/coreos","basearch":"x86_64","packages":["kernel"]}"#
    );
}

#[test]
fn every_supported_key_is_read() {
    let fx = Fx::new();
    fx.write("motd", "hello\n");
    fx.executable("post.sh", "#!/bin/sh\n");
    fx.write(
        "manifest.yaml",
        indoc! {r##"
            edition: 2024
            ref: fedora/${basearch}/coreos
            releasever: 40
            variables:
              stream: testing
            repos: [fedora, updates]
            packages: [kernel]
            packages-x86_64: [grub2]
            exclude-packages: [nano]
            repo-packages:
              - repo: updates
                packages: [systemd]
            add-files:
              - [motd, /etc/motd]
            remove-files: [usr/share/info]
            remove-from-packages:
              - [filesystem, "/usr/share/backgrounds", "/usr/lib/x"]
            postprocess: ["#!/bin/sh\ntrue\n"]
            postprocess-script: post.sh
            automatic-version-prefix: "40.<date:%Y%m%d>"
            automatic-version-suffix: "-"
            mutate-os-release: "40"
            add-commit-metadata:
              fedora-coreos.stream: ${stream}
            units: [sshd.service]
            default-target: multi-user.target
            machineid-compat: true
            boot-location: kernel-install
            recommends: false
            documentation: false
            initramfs-args: [--no-hostonly]
            selinux: false
            metadata:
              name: fedora-coreos
        "##},
    );
    let tf = fx.load("manifest.yaml");
    assert_eq!(tf.edition, Some(Edition::E2024));
    assert_eq!(tf.ostree_ref, "fedora/x86_64/coreos");
    assert_eq!(tf.releasever, Some(ReleaseVer::Number(40)));
    assert_eq!(tf.variables["stream"], VarValue::String("testing".into()));
    assert_eq!(tf.repos, Some(strings(&["fedora", "updates"])));
    assert_eq!(tf.packages(), ["kernel", "grub2"]);
    assert_eq!(tf.exclude_packages, ["nano"]);
    assert_eq!(tf.repo_packages[0].repo, "updates");
    assert_eq!(tf.add_files[0].src, "motd");
    assert_eq!(tf.add_files[0].src_path, fx.root.join("motd"));
    assert_eq!(tf.add_files[0].dest, "/etc/motd");
    assert_eq!(tf.remove_files, ["usr/share/info"]);
    assert_eq!(
        tf.remove_from_package_patterns("filesystem"),
        ["/usr/share/backgrounds", "/usr/lib/x"]
    );
    assert_eq!(tf.postprocess.len(), 1);
    assert_eq!(
        tf.postprocess_script.as_ref().unwrap().path,
        fx.root.join("post.sh")
    );
    assert_eq!(
        tf.automatic_version_prefix.as_deref(),
        Some("40.<date:%Y%m%d>")
    );
    assert_eq!(tf.automatic_version_suffix_or_default(), '-');
    assert_eq!(tf.mutate_os_release.as_deref(), Some("40"));
    assert_eq!(tf.add_commit_metadata["fedora-coreos.stream"], "testing");
    assert_eq!(tf.units, ["sshd.service"]);
    assert_eq!(tf.default_target.as_deref(), Some("multi-user.target"));
    assert_eq!(tf.machineid_compat, Some(true));
    assert_eq!(tf.boot_location_or_default(), BootLocation::KernelInstall);
    assert!(!tf.recommends_enabled() && !tf.documentation_enabled() && !tf.selinux_enabled());
    assert_eq!(tf.initramfs_args, ["--no-hostonly"]);
    assert_eq!(tf.metadata["name"], "fedora-coreos");
    let names: Vec<String> = tf.externals().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["motd", "post.sh"]);
    // The pretty JSON is the merged treefile, with names as written (no checkout path).
    let pretty = tf.to_json_pretty();
    assert!(pretty.contains(r#""edition": "2024""#), "{pretty}");
    assert!(
        pretty.contains(r#""boot-location": "kernel-install""#),
        "{pretty}"
    );
    assert!(pretty.contains(r#""metadata""#), "{pretty}");
    assert!(!pretty.contains(fx.root.as_str()), "{pretty}");
}

#[test]
fn edition_2024_defaults_boot_location_to_modules() {
    let fx = Fx::new();
    fx.write("m.yaml", &format!("{MINIMAL}edition: \"2024\"\n"));
    assert_eq!(
        fx.load("m.yaml").boot_location_or_default(),
        BootLocation::Modules
    );
}

#[test]
fn json_treefile_matches_yaml_and_tolerates_comments() {
    let fx = Fx::new();
    // YAML's own single quotes would be consumed by YAML: rpm-ostree's go inside.
    fx.write(
        "y.yaml",
        "ref: r\npackages: [a, \"'b >= 1'\"]\nreleasever: 40\n",
    );
    fx.write(
        "j.json",
        indoc! {r#"
            {
              "comment": "JSON has no comments, so keys starting with comment are allowed",
              "releasever": 40,
              "comment-2": ["anything"],
              "packages": ["a", "'b >= 1'"],
              "ref": "r"
            }
        "#},
    );
    let (y, j) = (fx.load("y.yaml"), fx.load("j.json"));
    assert_eq!(y, j);
    assert_eq!(y.canonical_json(), j.canonical_json());

    // In YAML a comment key is just an unknown key.
    fx.write("c.yaml", &format!("{MINIMAL}comment: hi\n"));
    assert!(fx.err("c.yaml").contains("unknown key `comment`"));
}

#[test]
fn unknown_keys_name_key_file_and_line() {
    let fx = Fx::new();
    let cases = [
        ("bogus: 1\n", "unknown key `bogus`"),
        (
            "ostree-layers: [overlay/1]\n",
            "`ostree-layers` is an rpm-ostree treefile key",
        ),
        ("check-passwd: {type: none}\n", "not supported by cosa"),
        ("container: true\n", "`container`"),
    ];
    for (extra, want) in cases {
        let file = fx.write("m.yaml", &format!("{MINIMAL}# a comment\n{extra}"));
        let e = fx.err("m.yaml");
        assert!(e.starts_with(&format!("{file}:5:1: ")), "{e}");
        assert!(e.contains(want), "{e}");
    }

    // In an included file, the included file is named.
    fx.write("top.yaml", "include: sub/inc.yaml\nref: r\npackages: [a]\n");
    let inc = fx.write("sub/inc.yaml", "packages: [b]\nunits-typo: [x]\n");
    let e = fx.err("top.yaml");
    assert!(e.starts_with(&format!("{inc}:2:1: ")), "{e}");
    assert!(e.contains("`units-typo`"), "{e}");

    // JSON: named with its line too (from serde_json).
    let j = fx.write(
        "m.json",
        "{\"ref\": \"r\",\n \"packages\": [\"a\"],\n \"bogus\": 1}\n",
    );
    let e = fx.err("m.json");
    assert!(e.starts_with(&format!("{j}:3:")), "{e}");
    assert!(e.contains("unknown key `bogus`"), "{e}");
}

#[test]
fn wrong_types_are_located() {
    let fx = Fx::new();
    // (document after a first line `ref: r`, line of the error)
    let cases = [
        ("packages: kernel\n", 2),
        ("packages:\n  - kernel\n  - {a: 1}\n", 4),
        ("selinux: \"yes\"\n", 2),
        ("boot-location: sideways\n", 2),
        ("edition: 2020\n", 2),
        ("releasever: [40]\n", 2),
        ("add-files:\n  - [only-one]\n", 3),
        ("remove-from-packages:\n  - [pkg]\n", 3),
        ("include: {a: b}\n", 2),
        ("variables:\n  v: [1]\n", 3),
        (
            "conditional-include:\n  - if: releasever >=\n    include: x.yaml\n",
            3,
        ),
        ("conditional-include:\n  - include: x.yaml\n", 3),
        (
            "repo-packages:\n  - repo: a\n    packages: [b]\n    bogus: 1\n",
            5,
        ),
    ];
    for (body, line) in cases {
        let file = fx.write("m.yaml", &format!("ref: r\n{body}"));
        let e = fx.err("m.yaml");
        assert!(e.starts_with(&format!("{file}:{line}:")), "{body:?}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

/// The project's own example config (examples/config) loads.
#[test]
fn example_config_loads() {
    let path = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config/manifest.yaml");
    let tf = load(&path, ARCH).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(tf.ostree_ref, "example-os/x86_64/stable");
    assert!(tf.packages().contains(&"example-kernel".to_string()));
}

proptest::proptest! {
    /// The string parsers and the document reader never panic, whatever the input.
    #[test]
    fn arbitrary_input_does_not_panic(s in "\\PC{0,64}", doc in "[a-z{}\\[\\]:, '\"\\n$-]{0,80}") {
        let _ = text::split_packages(&s);
        let _ = text::substitute(&s, &|n: &str| (n == "a").then(|| "x".to_string()));
        if let Ok(c) = cond::Condition::parse(&s) {
            let _ = c.evaluate(|_| Some(VarValue::Number(1)));
        }
        let _ = crate::parse::yaml_from_str::<raw::RawDoc<false>>(&doc, "p.yaml");
        let _ = crate::parse::json_from_slice::<raw::RawDoc<true>>(doc.as_bytes(), "p.json");
    }

    /// Splitting never yields an empty or white-space-padded package.
    #[test]
    fn split_packages_yields_trimmed_names(s in "[a-z '>=.0-9\\t]{0,40}") {
        if let Ok(v) = text::split_packages(&s) {
            for p in v {
                proptest::prop_assert!(!p.is_empty() && p.trim() == p, "{p:?} from {s:?}");
            }
        }
    }
}
