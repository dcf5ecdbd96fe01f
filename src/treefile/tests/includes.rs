//! Include resolution, conditions, variables, merge order.

use camino::{Utf8Path, Utf8PathBuf};
use indoc::indoc;

use super::*;

#[test]
fn includes_resolve_relative_to_the_including_file() {
    let fx = Fx::new();
    fx.write(
        "manifest.yaml",
        "ref: r\ninclude: manifests/base.yaml\npackages: [top]\n",
    );
    fx.write(
        "manifests/base.yaml",
        "include: [shared/one.yaml, ../common/two.yaml]\npackages: [base]\n",
    );
    fx.write("manifests/shared/one.yaml", "packages: [one]\n");
    fx.write("common/two.yaml", "packages: [two]\n");
    let tf = fx.load("manifest.yaml");
    // later includes come before earlier ones, the includer's own entries last
    assert_eq!(tf.packages(), ["two", "one", "base", "top"]);

    // Loading through a relative path works the same.
    let rel = pathdiff(&fx.root.join("manifest.yaml"));
    assert_eq!(load(&rel, ARCH).unwrap().packages(), tf.packages());
}

/// `path` relative to the current directory (via enough `..`).
fn pathdiff(path: &Utf8Path) -> Utf8PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let ups = cwd.components().count() - 1;
    let mut p = Utf8PathBuf::new();
    for _ in 0..ups {
        p.push("..");
    }
    p.push(path.strip_prefix("/").unwrap());
    p
}

#[test]
fn a_file_may_be_included_only_once() {
    let fx = Fx::new();
    fx.write("common.yaml", "packages: [c]\n");
    fx.write("a.yaml", "include: common.yaml\n");
    fx.write("b.yaml", "include: common.yaml\n");
    fx.write("diamond.yaml", "ref: r\ninclude: [a.yaml, b.yaml]\n");
    let e = fx.err("diamond.yaml");
    assert!(e.contains("included twice"), "{e}");
    assert!(e.contains(&fx.path("common.yaml")), "{e}");

    fx.write(
        "twice.yaml",
        "ref: r\ninclude: [common.yaml, ./common.yaml]\n",
    );
    assert!(fx.err("twice.yaml").contains("included twice"));
}

#[test]
fn include_cycles_are_errors() {
    let fx = Fx::new();
    fx.write("a.yaml", "ref: r\npackages: [x]\ninclude: b.yaml\n");
    fx.write("b.yaml", "include: a.yaml\n");
    let e = fx.err("a.yaml");
    assert!(e.contains("include cycle"), "{e}");
    let chain = format!(
        "{} includes {} includes {}",
        fx.path("a.yaml"),
        fx.path("b.yaml"),
        fx.path("a.yaml")
    );
    assert!(e.contains(&chain), "{e}");

    // Identity is the inode, not the path string: a symlink back is still a cycle.
    fx.write("c.yaml", "ref: r\npackages: [x]\ninclude: sub/link.yaml\n");
    std::fs::create_dir_all(fx.root.join("sub")).unwrap();
    std::os::unix::fs::symlink(fx.root.join("c.yaml"), fx.root.join("sub/link.yaml")).unwrap();
    assert!(fx.err("c.yaml").contains("include cycle"));

    fx.write("self.yaml", "ref: r\npackages: [x]\ninclude: self.yaml\n");
    assert!(fx.err("self.yaml").contains("include cycle"));
}

#[test]
fn include_depth_is_capped_at_50() {
    let fx = Fx::new();
    let chain = |n: usize| {
        for i in 0..n {
            fx.write(
                &format!("d{i}.yaml"),
                &format!("include: d{}.yaml\n", i + 1),
            );
        }
        fx.write(&format!("d{n}.yaml"), "ref: r\npackages: [deep]\n");
    };
    chain(MAX_INCLUDE_DEPTH as usize);
    assert_eq!(fx.load("d0.yaml").packages(), ["deep"]);
    chain(MAX_INCLUDE_DEPTH as usize + 1);
    let e = fx.err("d0.yaml");
    assert!(e.contains("nested more than 50 deep"), "{e}");
}

#[test]
fn missing_include_names_the_including_file() {
    let fx = Fx::new();
    let top = fx.write("m.yaml", &format!("{MINIMAL}include: nope.yaml\n"));
    let e = fx.err("m.yaml");
    assert!(
        e.starts_with(&format!("{top}:4:1: include nope.yaml")),
        "{e}"
    );
}

#[test]
fn arch_include_picks_only_the_matching_arch() {
    let fx = Fx::new();
    fx.write(
        "m.yaml",
        indoc! {"
            ref: r
            packages: [common]
            include: base.yaml
            arch-include:
              x86_64: [x86.yaml, x86-extra.yaml]
              aarch64: does-not-exist.yaml
              s390x: s390x.yaml
        "},
    );
    fx.write("base.yaml", "packages: [base]\n");
    fx.write("x86.yaml", "packages: [grub2]\n");
    fx.write("x86-extra.yaml", "packages: [microcode_ctl]\n");
    fx.write("s390x.yaml", "packages: [s390utils]\n");
    let tf = fx.load("m.yaml");
    // arch-include is processed after include
    assert_eq!(tf.packages(), ["microcode_ctl", "grub2", "base", "common"]);
}

#[test]
fn conditional_include_evaluates_conditions() {
    let fx = Fx::new();
    fx.write("inc.yaml", "packages: [included]\n");
    // (condition, included?)
    let cases = [
        ("releasever == 38", true),
        ("releasever == 37", false),
        ("releasever != 37", true),
        ("releasever >= 35", true),
        ("releasever >= 39", false),
        ("releasever < 40", true),
        ("releasever < 9", false),
        (r#"basearch == "x86_64""#, true),
        (r#"basearch == "aarch64""#, false),
        ("prod == true", true),
        (r#"stream != "stable""#, true),
        // a list: all must hold
        (r#"[releasever >= 35, basearch == "x86_64"]"#, true),
        (r#"[releasever >= 35, basearch == "s390x"]"#, false),
    ];
    for (cond, want) in cases {
        fx.write(
            "m.yaml",
            &format!(
                "ref: r\nreleasever: 38\nvariables: {{prod: true, stream: next}}\n\
                 packages: [own]\nconditional-include:\n  - if: {cond}\n    include: inc.yaml\n"
            ),
        );
        let has = fx
            .load("m.yaml")
            .packages()
            .contains(&"included".to_string());
        assert_eq!(has, want, "{cond}");
    }
}

#[test]
fn conditional_include_errors() {
    let fx = Fx::new();
    let cases = [
        (
            "if: stream == \"next\"\n    include: x.yaml",
            "unknown variable `stream`",
        ),
        (
            "if: releasever == \"38\"\n    include: x.yaml",
            "is a number",
        ),
        // every condition of a list is checked, even after a false one
        (
            "if: [releasever > 99, typo == 1]\n    include: x.yaml",
            "unknown variable `typo`",
        ),
        (
            "if: releasever == 38\n    include: {add-files: [[a, /etc/a]]}",
            "`add-files` cannot",
        ),
        (
            "if: releasever == 38\n    include: {postprocess-script: s.sh}",
            "inline",
        ),
        (
            "if: releasever == 38\n    include: {include: x.yaml}",
            "`include` cannot",
        ),
        (
            "if: releasever == 38\n    include: {ostree-layers: [x]}",
            "`ostree-layers`",
        ),
        (
            "if: releasever == 38\n    include: {variables: {basearch: x}}",
            "reserved",
        ),
    ];
    for (entry, want) in cases {
        let file = fx.write(
            "m.yaml",
            &format!("{MINIMAL}releasever: 38\nconditional-include:\n  - {entry}\n"),
        );
        let e = fx.err("m.yaml");
        assert!(e.starts_with(&format!("{file}:")), "{entry}: {e}");
        assert!(e.contains(want), "{entry}: {e}");
    }
}

#[test]
fn conditional_inline_treefile_and_file_lists() {
    let fx = Fx::new();
    fx.write("a.yaml", "packages: [from-a]\npostprocess: [a]\n");
    fx.write("b.yaml", "packages: [from-b]\npostprocess: [b]\n");
    fx.write(
        "m.yaml",
        indoc! {r#"
            ref: r
            releasever: 40
            packages: [own]
            postprocess: [own]
            conditional-include:
              - if: releasever >= 40
                include:
                  packages: [inline]
                  postprocess: [inline]
                  default-target: graphical.target
              - if: basearch == "x86_64"
                include: [a.yaml, b.yaml]
              - if: releasever < 40
                include:
                  packages: [not-me]
        "#},
    );
    let tf = fx.load("m.yaml");
    assert_eq!(tf.packages(), ["from-b", "from-a", "inline", "own"]);
    assert_eq!(tf.postprocess, ["b", "a", "inline", "own"]);
    assert_eq!(tf.default_target.as_deref(), Some("graphical.target"));
}

#[test]
fn variables_merge_with_the_includer_winning() {
    let fx = Fx::new();
    fx.write(
        "m.yaml",
        indoc! {r#"
            ref: os/${stream}/${flavor}
            packages: [k]
            include: base.yaml
            variables:
              stream: testing
            conditional-include:
              - if: flavor == "minimal"
                include:
                  packages: [minimal-extra]
        "#},
    );
    fx.write(
        "base.yaml",
        "variables:\n  stream: stable\n  flavor: minimal\nreleasever: 39\n",
    );
    let tf = fx.load("m.yaml");
    assert_eq!(tf.ostree_ref, "os/testing/minimal");
    assert_eq!(tf.variables["stream"], VarValue::String("testing".into()));
    assert_eq!(tf.variables["flavor"], VarValue::String("minimal".into()));
    // a variable from an include is visible to the includer's conditions
    assert!(tf.packages().contains(&"minimal-extra".to_string()));
    // reserved names are not user variables
    assert!(!tf.variables.contains_key("releasever"));

    for reserved in ["basearch", "releasever"] {
        let file = fx.write("r.yaml", &format!("{MINIMAL}variables:\n  {reserved}: x\n"));
        let e = fx.err("r.yaml");
        assert!(e.starts_with(&format!("{file}:4:")), "{e}");
        assert!(e.contains(&format!("`{reserved}` is reserved")), "{e}");
    }
}
