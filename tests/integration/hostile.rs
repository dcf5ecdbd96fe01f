//! A corpus of hostile and broken inputs, one a row: treefiles, image.yaml,
//! builds.json and meta.json in the work directory, command-line arguments, and a
//! store (a file store, and an S3 server) serving hostile builds.json and meta.json.
//! Traversal (`../`, absolute paths, symlinks leading out of the build directory) in
//! build IDs, arch names and artifact paths; YAML alias bombs; invalid UTF-8; huge
//! files; wrong types.
//!
//! Each must give the documented exit code (1, or 2 for a usage error), exactly one
//! `error:` line containing the expected words, no panic, and write nothing outside
//! the work directory: the directory around it (a sentinel tree, and the store unless
//! the binary is cosa-upload) is snapshotted before and after.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use anyhow::{Context, Result, ensure};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{TestWorkdir, bin, run};
use crate::store_util::make_build;

/// A work directory `w` with build 1.0 (one artifact), a config, and beside it a
/// sentinel tree and a file store holding the same build.
struct Env {
    t: TestWorkdir,
    outer: Utf8PathBuf,
}

const ART: &str = "example-os-1.0-a0.x86_64.raw";

impl Env {
    /// `fresh`: the work directory then loses its build (kept in the store), to be fetched.
    fn new(fresh: bool) -> Result<Self> {
        let td = tempfile::tempdir()?;
        let outer = crate::common::utf8(td.path())?;
        let t = TestWorkdir::inside(td, "w")?;
        make_build(&t, "1.0", "x86_64", &[4096])?;
        let cfg = t.wd.config_dir();
        std::fs::create_dir_all(&cfg)?;
        std::fs::write(
            cfg.join("manifest.yaml"),
            "ref: example-os/x86_64/stable\npackages: [bash]\nrepos: [example]\n",
        )?;
        std::fs::write(cfg.join("image.yaml"), "size: 3\n")?;
        let s = outer.join("sentinel");
        std::fs::create_dir_all(s.join("sub"))?;
        std::fs::write(s.join("secret.txt"), "sentinel\n")?;
        std::fs::write(s.join("sub/file"), "sentinel\n")?;
        std::fs::create_dir_all(outer.join("store"))?;
        let r = run(bin("cosa-upload").args([
            "--workdir",
            t.root().as_str(),
            "--url",
            outer.join("store").as_str(),
        ]))?;
        ensure!(r.code == 0, "base upload: {}", r.stderr);
        if fresh {
            std::fs::remove_dir_all(t.root().join("builds/1.0"))?;
            std::fs::remove_file(t.root().join("builds/builds.json"))?;
            std::fs::remove_file(t.root().join("builds/latest"))?;
        }
        Ok(Self { t, outer })
    }

    fn root(&self) -> &Utf8Path {
        self.t.root()
    }
    fn arch_dir(&self) -> Utf8PathBuf {
        self.root().join("builds/1.0/x86_64")
    }
    fn store(&self) -> Utf8PathBuf {
        self.outer.join("store")
    }
    fn sentinel(&self) -> Utf8PathBuf {
        self.outer.join("sentinel")
    }

    fn config(&self, name: &str, data: impl AsRef<[u8]>) -> Result<()> {
        Ok(std::fs::write(self.t.wd.config_dir().join(name), data)?)
    }

    fn meta_value(path: &Utf8Path) -> Result<Value> {
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    }

    /// Change the local meta.json of 1.0 (raw write: the hostile value stays).
    fn local_meta(&self, f: impl FnOnce(&mut Value)) -> Result<()> {
        let p = self.arch_dir().join("meta.json");
        let mut v = Self::meta_value(&p)?;
        f(&mut v);
        Ok(std::fs::write(p, serde_json::to_vec(&v)?)?)
    }

    /// Change the store's meta.json of 1.0.
    fn store_meta(&self, f: impl FnOnce(&mut Value)) -> Result<()> {
        let p = self.store().join("1.0/x86_64/meta.json");
        let mut v = Self::meta_value(&p)?;
        f(&mut v);
        Ok(std::fs::write(p, serde_json::to_vec(&v)?)?)
    }

    fn local_builds(&self, data: impl AsRef<[u8]>) -> Result<()> {
        Ok(std::fs::write(
            self.root().join("builds/builds.json"),
            data,
        )?)
    }

    fn store_builds(&self, data: impl AsRef<[u8]>) -> Result<()> {
        Ok(std::fs::write(self.store().join("builds.json"), data)?)
    }

    /// A file of `len` bytes (sparse: no disk used) at `path`.
    fn huge(path: &Utf8Path, len: u64) -> Result<()> {
        let f = std::fs::File::create(path)?;
        f.set_len(len)?;
        Ok(())
    }

    /// Every file, directory and symlink around the work directory, with contents.
    fn snapshot(&self, with_store: bool) -> Result<BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        let mut stack = vec![self.outer.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let e = e?;
                let p = crate::common::utf8(&e.path())?;
                let rel = p.strip_prefix(&self.outer)?.to_string();
                if rel == "w" || (!with_store && rel == "store") {
                    continue;
                }
                let ty = e.file_type()?;
                let v = if ty.is_symlink() {
                    format!("-> {}", std::fs::read_link(&p)?.display())
                } else if ty.is_dir() {
                    stack.push(p.clone());
                    "dir".to_string()
                } else {
                    let md = e.metadata()?;
                    if md.len() > (1 << 20) {
                        format!("{} bytes", md.len())
                    } else {
                        hex::encode(Sha256::digest(std::fs::read(&p)?))
                    }
                };
                m.insert(rel, v);
            }
        }
        Ok(m)
    }
}

type Setup = fn(&Env) -> Result<()>;

struct Case {
    name: &'static str,
    bin: &'static str,
    /// `{store}` and `{sentinel}` are replaced with those paths.
    args: &'static [&'static str],
    setup: Setup,
    code: i32,
    /// Words the error line must contain (case-insensitive).
    want: &'static [&'static str],
}

fn none(_: &Env) -> Result<()> {
    Ok(())
}

const BOMB: &str = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n\
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]\nref: x\npackages: *i\n";

fn invalid_utf8() -> Vec<u8> {
    b"ref: \"ex\xff\xfeample\"\npackages: [bash]\n".to_vec()
}

fn deep_yaml() -> String {
    format!(
        "ref: x\npackages: {}{}\n",
        "[".repeat(5000),
        "]".repeat(5000)
    )
}

fn deep_json() -> String {
    format!(
        "{{\"schema-version\": \"1.0.0\", \"builds\": {}{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    )
}

fn builds_with(id: &str, arch: &str) -> String {
    json!({"schema-version": "1.0.0", "builds": [{"id": id, "arches": [arch]}]}).to_string()
}

fn image_path(v: &mut Value, path: &str) {
    v["images"]["a0"]["path"] = json!(path);
}

const FETCH_ALL: &[&str] = &["--url", "{store}", "--arch", "x86_64", "--artifact", "all"];
const UPLOAD: &[&str] = &["--url", "{store}"];

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let c = |name, bin, args, setup: Setup, code, want| Case {
        name,
        bin,
        args,
        setup,
        code,
        want,
    };
    vec![
        // --- treefile (cosa-compose) ---
        c("treefile alias bomb", "cosa-compose", &[], |e| e.config("manifest.yaml", BOMB), 1, &["manifest.yaml"]),
        c("treefile invalid UTF-8", "cosa-compose", &[], |e| e.config("manifest.yaml", invalid_utf8()), 1, &["manifest.yaml", "utf-8"]),
        c("treefile huge", "cosa-compose", &[], |e| Env::huge(&e.t.wd.config_dir().join("manifest.yaml"), 64 << 20), 1, &["manifest.yaml", "larger"]),
        c("treefile packages wrong type", "cosa-compose", &[], |e| e.config("manifest.yaml", "ref: x\npackages: 42\n"), 1, &["manifest.yaml:2"]),
        c("treefile ref wrong type", "cosa-compose", &[], |e| e.config("manifest.yaml", "ref: [a, b]\npackages: [bash]\n"), 1, &["manifest.yaml:1"]),
        c("treefile nesting 5000 deep", "cosa-compose", &[], |e| e.config("manifest.yaml", deep_yaml()), 1, &["manifest.yaml"]),
        c("treefile duplicate key", "cosa-compose", &[], |e| e.config("manifest.yaml", "ref: x\nref: y\npackages: [bash]\n"), 1, &["manifest.yaml:2", "duplicate"]),
        c("treefile unknown key", "cosa-compose", &[], |e| e.config("manifest.yaml", "ref: x\npackages: [bash]\nrm-rf: /\n"), 1, &["manifest.yaml", "rm-rf"]),
        c("treefile empty", "cosa-compose", &[], |e| e.config("manifest.yaml", ""), 1, &["manifest.yaml"]),
        c("treefile not YAML", "cosa-compose", &[], |e| e.config("manifest.yaml", "\t- : : [\n"), 1, &["manifest.yaml"]),
        c("treefile is a directory", "cosa-compose", &[], |e| { std::fs::remove_file(e.t.wd.config_dir().join("manifest.yaml"))?; Ok(std::fs::create_dir(e.t.wd.config_dir().join("manifest.yaml"))?) }, 1, &["manifest.yaml"]),
        c("treefile include loop", "cosa-compose", &[], |e| e.config("manifest.yaml", "include: manifest.yaml\nref: x\n"), 1, &["manifest.yaml", "include"]),
        c("treefile include absolute", "cosa-compose", &[], |e| e.config("manifest.yaml", "include: /etc/passwd\nref: x\n"), 1, &["/etc/passwd"]),
        c("treefile include missing traversal", "cosa-compose", &[], |e| e.config("manifest.yaml", "include: ../../../nope/x.yaml\nref: x\n"), 1, &["x.yaml"]),
        c("treefile add-files source escapes config", "cosa-compose", &[], |e| { e.config("manifest.yaml", "ref: x\npackages: [bash]\nrepos: [example]\nadd-files:\n  - [\"../../../sentinel/secret.txt\", \"/etc/x\"]\n") }, 1, &["../../../sentinel/secret.txt"]),
        c("treefile add-files destination traversal", "cosa-compose", &[], |e| { e.config("manifest.yaml", "ref: x\npackages: [bash]\nrepos: [example]\nadd-files:\n  - [\"image.yaml\", \"../../../../tmp/cosa-pwned\"]\n") }, 1, &["cosa-pwned"]),
        c("treefile postprocess-script outside", "cosa-compose", &[], |e| { e.config("manifest.yaml", "ref: x\npackages: [bash]\nrepos: [example]\npostprocess-script: /etc/passwd\n") }, 1, &["postprocess"]),
        c("treefile include of a file outside", "cosa-compose", &[], |e| { e.config("manifest.yaml", "include: ../../../sentinel/secret.txt\nref: x\n") }, 1, &["secret.txt"]),
        c("treefile package is a map", "cosa-compose", &[], |e| e.config("manifest.yaml", "ref: x\npackages: [{a: b}]\n"), 1, &["manifest.yaml:2"]),
        // --- image.yaml (cosa-image) ---
        c("image.yaml alias bomb", "cosa-compose", &[], |e| { e.config("image.yaml", BOMB.replace("ref: x\npackages: *i", "extra-kargs: *i")) }, 1, &["image.yaml"]),
        c("image.yaml invalid UTF-8", "cosa-compose", &[], |e| e.config("image.yaml", b"size: 3\nbootfs: \"ext\xff4\"\n"), 1, &["image.yaml"]),
        c("image.yaml huge", "cosa-compose", &[], |e| Env::huge(&e.t.wd.config_dir().join("image.yaml"), 64 << 20), 1, &["image.yaml", "larger"]),
        c("image.yaml size wrong type", "cosa-compose", &[], |e| e.config("image.yaml", "size: big\n"), 1, &["image.yaml:1"]),
        c("image.yaml negative size", "cosa-compose", &[], |e| e.config("image.yaml", "size: -1\n"), 1, &["image.yaml"]),
        c("image.yaml enormous size", "cosa-compose", &[], |e| e.config("image.yaml", "size: 99999999999999999999999\n"), 1, &["image.yaml"]),
        c("image.yaml bad fs", "cosa-compose", &[], |e| e.config("image.yaml", "size: 3\nrootfs: \"../../x\"\n"), 1, &["image.yaml"]),
        c("image.yaml kargs wrong type", "cosa-compose", &[], |e| e.config("image.yaml", "size: 3\nextra-kargs: {a: b}\n"), 1, &["image.yaml"]),
        c("image.yaml unknown key", "cosa-compose", &[], |e| e.config("image.yaml", "size: 3\nformat-disk: /dev/sda\n"), 1, &["image.yaml", "format-disk"]),
        c("image.yaml nesting 5000 deep", "cosa-compose", &[], |e| { e.config("image.yaml", format!("extra-kargs: {}{}\n", "[".repeat(5000), "]".repeat(5000))) }, 1, &["image.yaml"]),
        // --- local builds.json ---
        c("builds.json id ../", "cosa-upload", UPLOAD, |e| e.local_builds(builds_with("../../sentinel", "x86_64")), 1, &["builds.json", "build id"]),
        c("builds.json id absolute", "cosa-upload", UPLOAD, |e| e.local_builds(builds_with("/etc", "x86_64")), 1, &["builds.json", "build id"]),
        c("builds.json id 'latest'", "cosa-upload", UPLOAD, |e| e.local_builds(builds_with("latest", "x86_64")), 1, &["builds.json", "reserved"]),
        c("builds.json arch traversal", "cosa-upload", UPLOAD, |e| e.local_builds(builds_with("1.0", "../../sentinel")), 1, &["builds.json", "arch"]),
        c("builds.json arch with slash", "cosa-fetch", FETCH_ALL, |e| e.local_builds(builds_with("1.0", "x86_64/../..")), 1, &["builds.json", "arch"]),
        c("builds.json wrong type", "cosa-upload", UPLOAD, |e| e.local_builds("{\"schema-version\": \"1.0.0\", \"builds\": \"all\"}"), 1, &["builds.json:1"]),
        c("builds.json invalid UTF-8", "cosa-upload", UPLOAD, |e| { e.local_builds(b"{\"schema-version\": \"1.0.0\", \"builds\": [{\"id\": \"\xff\", \"arches\": []}]}") }, 1, &["builds.json"]),
        c("builds.json nesting 5000 deep", "cosa-upload", UPLOAD, |e| e.local_builds(deep_json()), 1, &["builds.json"]),
        c("builds.json huge", "cosa-upload", UPLOAD, |e| Env::huge(&e.root().join("builds/builds.json"), 300 << 20), 1, &["builds.json", "larger"]),
        c("store builds.json truncated", "cosa-changed", &["--against", "{store}"], |e| e.store_builds("{\"schema-version\": \"1.0.0\", \"builds\": [{\"id\""), 1, &["builds.json"]),
        c("latest symlink leads out", "cosa-image", &[], |e| { let l = e.root().join("builds/latest"); std::fs::remove_file(&l)?; Ok(std::os::unix::fs::symlink("../../sentinel", l)?) }, 1, &["latest"]),
        // --- local meta.json (cosa-upload reads and sends the artifacts) ---
        c("meta.json artifact path ../", "cosa-upload", UPLOAD, |e| e.local_meta(|v| image_path(v, "../../../sentinel/secret.txt")), 1, &["meta.json", "../../../sentinel/secret.txt"]),
        c("meta.json artifact path absolute", "cosa-upload", UPLOAD, |e| e.local_meta(|v| image_path(v, "/etc/passwd")), 1, &["meta.json", "/etc/passwd"]),
        c("meta.json artifact symlink leads out", "cosa-upload", UPLOAD, |e| { let p = e.arch_dir().join(ART); std::fs::remove_file(&p)?; Ok(std::os::unix::fs::symlink(e.sentinel().join("secret.txt"), p)?) }, 1, &[ART]),
        c("meta.json buildid mismatch", "cosa-upload", UPLOAD, |e| e.local_meta(|v| v["buildid"] = json!("2.0")), 1, &["meta.json", "2.0"]),
        c("meta.json sha256 not hex", "cosa-upload", UPLOAD, |e| e.local_meta(|v| v["images"]["a0"]["sha256"] = json!("zz")), 1, &["meta.json", "sha256"]),
        c("meta.json size wrong type", "cosa-upload", UPLOAD, |e| e.local_meta(|v| v["images"]["a0"]["size"] = json!("big")), 1, &["meta.json"]),
        c("meta.json images wrong type", "cosa-upload", UPLOAD, |e| e.local_meta(|v| v["images"] = json!([1, 2])), 1, &["meta.json"]),
        c("meta.json invalid UTF-8", "cosa-upload", UPLOAD, |e| { Ok(std::fs::write(e.arch_dir().join("meta.json"), b"{\"buildid\": \"1.\xff\"}")?) }, 1, &["meta.json"]),
        c("meta.json huge", "cosa-upload", UPLOAD, |e| Env::huge(&e.arch_dir().join("meta.json"), 300 << 20), 1, &["meta.json", "larger"]),
        c("meta.json artifact sha256 wrong", "cosa-upload", UPLOAD, |e| e.local_meta(|v| v["images"]["a0"]["sha256"] = json!("0".repeat(64))), 1, &[ART, "sha256"]),
        // --- store responses (cosa-fetch from a file store) ---
        c("store builds.json id ../", "cosa-fetch", FETCH_ALL, |e| e.store_builds(builds_with("../../sentinel", "x86_64")), 1, &["builds.json", "build id"]),
        c("store builds.json id absolute", "cosa-fetch", FETCH_ALL, |e| e.store_builds(builds_with("/tmp/cosa-pwned", "x86_64")), 1, &["builds.json", "build id"]),
        c("store builds.json arch traversal", "cosa-fetch", FETCH_ALL, |e| e.store_builds(builds_with("1.0", "..")), 1, &["builds.json", "arch"]),
        c("store builds.json wrong type", "cosa-fetch", FETCH_ALL, |e| e.store_builds("{\"schema-version\": 1, \"builds\": {}}"), 1, &["builds.json"]),
        c("store builds.json invalid UTF-8", "cosa-fetch", FETCH_ALL, |e| e.store_builds(b"\xff\xfe{}"), 1, &["builds.json"]),
        c("store builds.json huge", "cosa-fetch", FETCH_ALL, |e| Env::huge(&e.store().join("builds.json"), 300 << 20), 1, &["builds.json", "larger"]),
        c("store builds.json nesting 5000 deep", "cosa-fetch", FETCH_ALL, |e| e.store_builds(deep_json()), 1, &["builds.json"]),
        c("store meta.json artifact path ../", "cosa-fetch", FETCH_ALL, |e| e.store_meta(|v| image_path(v, "../../../sentinel/pwned")), 1, &["meta.json", "../../../sentinel/pwned"]),
        c("store meta.json artifact path absolute", "cosa-fetch", FETCH_ALL, |e| e.store_meta(|v| image_path(v, "/tmp/cosa-pwned")), 1, &["meta.json", "/tmp/cosa-pwned"]),
        c("store meta.json artifact named meta.json", "cosa-fetch", FETCH_ALL, |e| e.store_meta(|v| image_path(v, "meta.json")), 1, &["meta.json"]),
        c("store meta.json buildid mismatch", "cosa-fetch", FETCH_ALL, |e| e.store_meta(|v| v["buildid"] = json!("../x")), 1, &["meta.json"]),
        c("store meta.json wrong type", "cosa-fetch", FETCH_ALL, |e| e.store_meta(|v| v["images"] = json!("all")), 1, &["meta.json"]),
        c("store meta.json huge", "cosa-fetch", FETCH_ALL, |e| Env::huge(&e.store().join("1.0/x86_64/meta.json"), 300 << 20), 1, &["meta.json", "larger"]),
        c("store meta.json size larger than the object", "cosa-fetch", FETCH_ALL, |e| e.store_meta(|v| v["images"]["a0"]["size"] = json!(1u64 << 50)), 1, &[ART]),
        c("store artifact corrupt", "cosa-fetch", FETCH_ALL, |e| { Ok(std::fs::write(e.store().join("1.0/x86_64").join(ART), vec![0u8; 4096])?) }, 1, &[ART, "sha256"]),
        c("store artifact symlink leads out", "cosa-fetch", FETCH_ALL, |e| { let p = e.store().join("1.0/x86_64").join(ART); std::fs::remove_file(&p)?; Ok(std::os::unix::fs::symlink(e.sentinel().join("secret.txt"), p)?) }, 1, &[ART]),
        // Planted symlinks in the local build directory: never written through. The
        // fetch succeeds (the links are replaced), nothing outside changes.
        c("local partial file symlink leads out", "cosa-fetch", FETCH_ALL, |e| { std::fs::create_dir_all(e.arch_dir())?; let p = e.arch_dir().join(format!(".cosa-tmp.{ART}.partial")); Ok(std::os::unix::fs::symlink(e.sentinel().join("secret.txt"), p)?) }, 0, &[]),
        c("local artifact symlink leads out", "cosa-fetch", FETCH_ALL, |e| { std::fs::create_dir_all(e.arch_dir())?; Ok(std::os::unix::fs::symlink(e.sentinel().join("secret.txt"), e.arch_dir().join(ART))?) }, 0, &[]),
        c("local meta.json symlink leads out", "cosa-fetch", FETCH_ALL, |e| { std::fs::create_dir_all(e.arch_dir())?; Ok(std::os::unix::fs::symlink(e.sentinel().join("secret.txt"), e.arch_dir().join("meta.json"))?) }, 0, &[]),
        c("store meta.json missing", "cosa-fetch", FETCH_ALL, |e| { Ok(std::fs::remove_file(e.store().join("1.0/x86_64/meta.json"))?) }, 1, &["meta.json"]),
        // --- command-line arguments ---
        c("fetch --build ../", "cosa-fetch", &["--url", "{store}", "--build", "../sentinel"], none, 1, &["../sentinel"]),
        c("fetch --arch traversal", "cosa-fetch", &["--url", "{store}", "--arch", "../../sentinel"], none, 1, &["arch"]),
        c("fetch --artifact traversal", "cosa-fetch", &["--url", "{store}", "--artifact", "../../x"], none, 1, &["../../x"]),
        c("fetch --file traversal", "cosa-fetch", &["--url", "{store}", "--file", "../../../sentinel/pwned"], none, 2, &[]),
        c("fetch --url unknown scheme", "cosa-fetch", &["--url", "ftp://127.0.0.1/x"], none, 1, &["ftp"]),
        c("fetch --url empty bucket", "cosa-fetch", &["--url", "s3:///x"], none, 1, &["s3://"]),
        c("upload --build absolute", "cosa-upload", &["--url", "{store}", "--build", "/etc"], none, 1, &["build id"]),
        c("upload --arch with slash", "cosa-upload", &["--url", "{store}", "--arch", "x86_64/../.."], none, 1, &["arch"]),
        c("upload --jobs 0", "cosa-upload", &["--url", "{store}", "--jobs", "0"], none, 2, &[]),
        c("image --build ..", "cosa-image", &["--build", ".."], none, 1, &["build id"]),
        c("image --platform traversal", "cosa-image", &["--platform", "../../x"], none, 2, &[]),
        c("extend --build traversal", "cosa-extend", &["--build", "../../sentinel", "--platform", "qemu"], none, 1, &["build id"]),
        c("extend --arch traversal", "cosa-extend", &["--arch", "../..", "--platform", "qemu"], none, 1, &["arch"]),
        c("changed --against unknown scheme", "cosa-changed", &["--against", "gopher://x"], none, 1, &["gopher"]),
        c("compose --workdir missing", "cosa-compose", &["--workdir", "{sentinel}/nope"], none, 1, &["nope"]),
        c("unknown option", "cosa-fetch", &["--url", "{store}", "--rm-rf"], none, 2, &[]),
    ]
}

fn check_case(c: &Case) -> Result<()> {
    let e = Env::new(c.bin == "cosa-fetch")?;
    (c.setup)(&e).context("setup")?;
    let with_store = c.bin != "cosa-upload";
    let before = e.snapshot(with_store)?;
    let mut cmd = bin(c.bin);
    if !c.args.contains(&"--workdir") {
        cmd.arg("--workdir").arg(e.root().as_str());
    }
    for a in c.args {
        cmd.arg(
            a.replace("{store}", e.store().as_str())
                .replace("{sentinel}", e.sentinel().as_str()),
        );
    }
    let r = run(&mut cmd)?;
    ensure!(!r.stderr.contains("panicked"), "panic:\n{}", r.stderr);
    ensure!(
        r.code == c.code,
        "exit code {} (want {}):\n{}",
        r.code,
        c.code,
        r.stderr
    );
    if c.code == 0 {
        crate::consistency::check_workdir(e.root())?;
    }
    if c.code == 1 {
        let lines: Vec<_> = r
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        ensure!(lines.len() == 1, "want one error line:\n{}", r.stderr);
        let line = lines[0].to_lowercase();
        for w in c.want {
            ensure!(
                line.contains(&w.to_lowercase()),
                "error line lacks {w:?}: {}",
                lines[0]
            );
        }
        ensure!(line.len() < 2000, "error line of {} bytes", line.len());
    }
    let after = e.snapshot(with_store)?;
    ensure!(
        before == after,
        "wrote outside the work directory:\nbefore {before:?}\nafter {after:?}"
    );
    ensure!(
        !Utf8Path::new("/tmp/cosa-pwned").exists(),
        "/tmp/cosa-pwned was written"
    );
    Ok(())
}

/// Every row of the corpus; all failures are reported together.
#[test]
fn hostile_inputs_fail_cleanly() -> Result<()> {
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failed = Vec::new();
    for c in &cases {
        if let Err(err) = check_case(c) {
            failed.push(format!("[{}] {}: {err:#}", c.bin, c.name));
        }
    }
    eprintln!(
        "hostile inputs: {} tried, {} failed",
        cases.len(),
        failed.len()
    );
    ensure!(failed.is_empty(), "{}", failed.join("\n\n"));
    Ok(())
}

/// An argument that is not UTF-8 is a usage error, for every binary.
#[test]
fn non_utf8_arguments_are_usage_errors() -> Result<()> {
    for name in [
        "cosa-compose",
        "cosa-image",
        "cosa-extend",
        "cosa-fetch",
        "cosa-upload",
        "cosa-changed",
    ] {
        let r = run(bin(name)
            .arg("--workdir")
            .arg(OsString::from_vec(b"/tmp/\xff\xfe".to_vec())))?;
        ensure!(
            !r.stderr.contains("panicked"),
            "{name}: panic:\n{}",
            r.stderr
        );
        ensure!(r.code == 2, "{name}: exit {}:\n{}", r.code, r.stderr);
    }
    Ok(())
}

/// An S3 store (s3s-fs) serving hostile documents: a builds.json whose build ID
/// leads out, a meta.json whose artifact path does, a wrong type; each fetch fails
/// with one line naming the document, and nothing around the work directory changes.
#[test]
fn s3_store_serving_hostile_documents() -> Result<()> {
    use crate::store_servers::{BUCKET, Kind, S3Server};
    let Some(s) = S3Server::start(Kind::S3sFs)? else {
        return Ok(());
    };
    let rt = tokio::runtime::Runtime::new()?;
    let e = Env::new(true)?;
    let src = TestWorkdir::new()?;
    make_build(&src, "1.0", "x86_64", &[4096])?;
    let url = s.url("hostile");
    let mut up = bin("cosa-upload");
    s.env(&mut up)
        .args(["--workdir", src.root().as_str(), "--url", &url]);
    let r = run(&mut up)?;
    ensure!(r.code == 0, "upload: {}", r.stderr);
    let meta_key = "hostile/1.0/x86_64/meta.json";
    let meta: Value = serde_json::from_slice(
        &crate::consistency::s3_get(&rt, &s, meta_key)?.context("meta.json")?,
    )?;
    let mut bad_path = meta.clone();
    image_path(&mut bad_path, "../../../sentinel/pwned");
    let rows: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "build ID ../",
            "hostile/builds.json",
            builds_with("../../sentinel", "x86_64").into_bytes(),
            "build id",
        ),
        (
            "arch ..",
            "hostile/builds.json",
            builds_with("1.0", "..").into_bytes(),
            "arch",
        ),
        (
            "builds.json wrong type",
            "hostile/builds.json",
            b"{\"builds\": 7}".to_vec(),
            "builds.json",
        ),
        (
            "artifact path ../",
            meta_key,
            serde_json::to_vec(&bad_path)?,
            "../../../sentinel/pwned",
        ),
        (
            "meta.json invalid UTF-8",
            meta_key,
            b"{\"buildid\": \"\xff\"}".to_vec(),
            "meta.json",
        ),
    ];
    let builds =
        crate::consistency::s3_get(&rt, &s, "hostile/builds.json")?.context("builds.json")?;
    for (name, key, body, want) in rows {
        // Put back the good documents, then the hostile one.
        for (k, b) in [
            ("hostile/builds.json", builds.clone()),
            (meta_key, serde_json::to_vec(&meta)?),
            (key, body),
        ] {
            rt.block_on(
                s.sdk()
                    .put_object()
                    .bucket(BUCKET)
                    .key(k)
                    .body(b.into())
                    .send(),
            )?;
        }
        let before = e.snapshot(true)?;
        let mut c = bin("cosa-fetch");
        s.env(&mut c)
            .args(["--workdir", e.root().as_str(), "--url", &url])
            .args(["--arch", "x86_64", "--artifact", "all"]);
        let r = run(&mut c)?;
        ensure!(
            !r.stderr.contains("panicked"),
            "{name}: panic:\n{}",
            r.stderr
        );
        ensure!(r.code == 1, "{name}: exit {}:\n{}", r.code, r.stderr);
        let line = r.error_line().to_lowercase();
        ensure!(
            line.contains(want),
            "{name}: error line lacks {want:?}: {line}"
        );
        ensure!(
            before == e.snapshot(true)?,
            "{name}: wrote outside the work directory"
        );
        crate::consistency::check_workdir(e.root())?;
    }
    Ok(())
}
