//! cosa-upload and cosa-fetch with a `gh-release://` store, against a fake GitHub
//! release API served by wiremock on loopback (as octocrab's own tests do): a
//! stateful responder keeps the assets, redirects downloads as GitHub does, and
//! refuses requests without the token.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::common::{TestWorkdir, bin, run};
use crate::store_util::{assert_same_tree, make_build};

const TOKEN: &str = "ghs_test-token-never-printed";

#[derive(Clone)]
struct FakeAsset {
    id: u64,
    name: String,
    label: Option<String>,
    data: Vec<u8>,
}

#[derive(Clone, Default)]
struct FakeGitHub {
    uri: Arc<Mutex<String>>,
    assets: Arc<Mutex<Vec<FakeAsset>>>,
    next: Arc<Mutex<u64>>,
}

impl FakeGitHub {
    fn asset_json(a: &FakeAsset) -> serde_json::Value {
        serde_json::json!({"id": a.id, "name": a.name, "label": a.label, "size": a.data.len()})
    }
}

impl Respond for FakeGitHub {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let path = req.url.path().to_string();
        let query: std::collections::HashMap<String, String> = req
            .url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let method = req.method.as_str();
        // Downloads are redirected to storage, which needs no token.
        if let Some(id) = path.strip_prefix("/storage/") {
            let assets = self.assets.lock().unwrap_or_else(|e| e.into_inner());
            let Some(a) = assets.iter().find(|a| a.id.to_string() == id) else {
                return ResponseTemplate::new(404);
            };
            let start = req
                .headers
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|s| s.parse::<usize>().ok());
            return match start {
                Some(s) => ResponseTemplate::new(206).set_body_bytes(a.data[s..].to_vec()),
                None => ResponseTemplate::new(200).set_body_bytes(a.data.clone()),
            };
        }
        let auth = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if auth != format!("Bearer {TOKEN}") {
            return ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"message": "Bad credentials"}));
        }
        let uri = self.uri.lock().map(|u| u.clone()).unwrap_or_default();
        let mut assets = self.assets.lock().unwrap_or_else(|e| e.into_inner());
        match (method, path.as_str()) {
            ("GET", "/repos/o/r/releases/tags/t") => ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "id": 1,
                "tag_name": "t",
                "upload_url": format!("{uri}/uploads/repos/o/r/releases/1/assets{{?name,label}}"),
            })),
            ("GET", "/repos/o/r/releases/1/assets") => {
                let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                let per: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30);
                let v: Vec<_> = assets.iter().skip((page - 1) * per).take(per).map(Self::asset_json).collect();
                ResponseTemplate::new(200).set_body_json(v)
            }
            ("POST", "/uploads/repos/o/r/releases/1/assets") => {
                let Some(name) = query.get("name") else {
                    return ResponseTemplate::new(400);
                };
                if assets.iter().any(|a| &a.name == name) {
                    return ResponseTemplate::new(422).set_body_json(serde_json::json!({"message": "already_exists"}));
                }
                let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
                *next += 1;
                let a = FakeAsset {
                    id: *next,
                    name: name.clone(),
                    label: query.get("label").cloned(),
                    data: req.body.clone(),
                };
                let j = Self::asset_json(&a);
                assets.push(a);
                ResponseTemplate::new(201).set_body_json(j)
            }
            (m, p) if p.starts_with("/repos/o/r/releases/assets/") => {
                let id = p.trim_start_matches("/repos/o/r/releases/assets/");
                let Some(i) = assets.iter().position(|a| a.id.to_string() == id) else {
                    return ResponseTemplate::new(404);
                };
                match m {
                    "GET" => ResponseTemplate::new(302).insert_header("location", format!("{uri}/storage/{id}")),
                    "DELETE" => {
                        assets.remove(i);
                        ResponseTemplate::new(204)
                    }
                    "PATCH" => {
                        let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
                        if let Some(n) = v["name"].as_str() {
                            assets[i].name = n.to_string();
                        }
                        ResponseTemplate::new(200).set_body_json(Self::asset_json(&assets[i]))
                    }
                    _ => ResponseTemplate::new(405),
                }
            }
            _ => ResponseTemplate::new(404).set_body_json(serde_json::json!({"message": "Not Found"})),
        }
    }
}

#[test]
fn round_trip_through_a_github_release() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let fake = FakeGitHub::default();
    let server = rt.block_on(async {
        let s = MockServer::start().await;
        Mock::given(any())
            .respond_with(fake.clone())
            .mount(&s)
            .await;
        s
    });
    if let Ok(mut u) = fake.uri.lock() {
        *u = server.uri();
    }
    let gh = |t: &TestWorkdir, name: &str, token: &str, args: &[&str]| {
        let mut c = bin(name);
        c.env("GITHUB_API_URL", server.uri())
            .env("GITHUB_TOKEN", token)
            .env_remove("GH_TOKEN")
            .args(["--workdir", t.root().as_str()])
            .args(args);
        run(&mut c)
    };
    let t = TestWorkdir::new()?;
    make_build(&t, "1.0", "x86_64", &[3 << 20, 10])?;
    let url = "gh-release://o/r/t";
    let r = gh(&t, "cosa-upload", TOKEN, &["--url", url])?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let names: Vec<String> = fake
        .assets
        .lock()
        .map(|a| a.iter().map(|a| a.name.clone()).collect())
        .unwrap_or_default();
    assert!(names.contains(&"builds.json".to_string()), "{names:?}");
    assert!(
        names.contains(&"1.0--x86_64--meta.json".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("cosa-tmp")), "{names:?}");
    // The label carries the sha256: nothing is sent twice.
    let r = gh(&t, "cosa-upload", TOKEN, &["--url", url])?;
    assert!(r.stdout.contains("skipped=2"), "{}\n{}", r.stdout, r.stderr);

    let t2 = TestWorkdir::new()?;
    let r = gh(
        &t2,
        "cosa-fetch",
        TOKEN,
        &["--url", url, "--arch", "x86_64", "--artifact", "all"],
    )?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_tree(
        &t.wd.build_arch_dir("1.0", "x86_64")?,
        &t2.wd.build_arch_dir("1.0", "x86_64")?,
    )?;

    // A bad token: one clear line, and no token in any output.
    let r = gh(
        &t2,
        "cosa-fetch",
        "wrong-token-never-printed",
        &["-vv", "--url", url],
    )?;
    assert_eq!(r.code, 1);
    assert!(r.error_line().contains("GITHUB_TOKEN"), "{}", r.stderr);
    assert!(!r.stderr.contains("wrong-token-never-printed"));
    // A missing release.
    let r = gh(
        &t2,
        "cosa-fetch",
        TOKEN,
        &["--url", "gh-release://o/r/nope"],
    )?;
    assert!(r.error_line().contains("no such release"), "{}", r.stderr);
    Ok(())
}
