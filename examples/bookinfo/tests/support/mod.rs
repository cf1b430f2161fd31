//! The harness the bookinfo end-to-end tests share: a running `bookinfo up` on free loopback
//! ports, requests through its gateway, its `/workloads` table, and Istio files applied to
//! its store.
#![allow(dead_code, unreachable_pub)]

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value;

pub const REVIEWS_UNAVAILABLE: &str =
    "Sorry, product reviews are currently unavailable for this book.";
pub const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";
pub const DETAILS_UNAVAILABLE: &str =
    "Sorry, product details are currently unavailable for this book.";
/// A request for details, as `openssl s_client` sends it.
pub const DETAILS_REQUEST: &[u8] =
    b"GET /details/0 HTTP/1.1\r\nHost: details\r\nConnection: close\r\n\r\n";
/// How long a configuration change may take to change routing.
pub const LIVE_CONFIG: Duration = Duration::from_secs(2);

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Sends `signal` (`TERM`, `KILL`, `0`) to `pid`; true if it was delivered.
pub fn kill(signal: &str, pid: u32) -> bool {
    Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn alive(pid: u32) -> bool {
    kill("0", pid)
}

/// Which reviews version served a product page: from "Reviews served by: reviews-vN-…",
/// else from the stars (none: v1, black: v2, red: v3).
pub fn version(page: &str) -> Option<&'static str> {
    for v in ["v1", "v2", "v3"] {
        if page.contains(&format!("served by: reviews-{v}-")) {
            return Some(v);
        }
    }
    if !page.contains("Book Reviews") || page.contains(REVIEWS_UNAVAILABLE) {
        return None;
    }
    if page.contains("color: red") || page.contains("color=\"red\"") {
        Some("v3")
    } else if page.contains("color: black") || page.contains("color=\"black\"") {
        Some("v2")
    } else {
        Some("v1")
    }
}

/// A running `bookinfo up`; dropping it kills every process it started.
pub struct Up {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    pub seen_pids: Vec<u32>,
    pub http: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in &self.seen_pids {
            if alive(*pid) {
                kill("KILL", *pid);
            }
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("---- last lines of bookinfo up ----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Up {
    /// Starts `bookinfo up` with `extra` flags, on a config dir holding the Istio `files`.
    pub async fn start(extra: &[&str], files: &[&str]) -> Up {
        let dir = tempfile::tempdir().expect("temp dir");
        if !files.is_empty() {
            apply(&dir.path().join("config"), files).await;
        }
        let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("up.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let config = dir.path().join("config");
        let child = Command::new(env!("CARGO_BIN_EXE_bookinfo"))
            .arg("up")
            .arg("--config-dir")
            .arg(&config)
            .args(["--gateway-port", &gateway.port().to_string()])
            .args(["--admin-port", &admin.port().to_string()])
            .args(["--drain-delay", "200ms"])
            .args(extra)
            .env_remove("MESH_CONFIG_DIR")
            .env_remove("MESH_STORE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("bookinfo up starts");
        Up {
            child,
            dir,
            gateway,
            admin,
            log,
            seen_pids: Vec::new(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub async fn request(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<(u16, http::HeaderMap, String), String> {
        let res = tokio::time::timeout(Duration::from_secs(20), self.http.request(req))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
    }

    /// GET `url` directly (not through the gateway).
    pub async fn get_url(&self, url: &str) -> Result<(u16, String), String> {
        let req = http::Request::get(url).body(Full::default()).unwrap();
        self.request(req).await.map(|(s, _, b)| (s, b))
    }

    /// GET through the gateway, with the session cookie if given.
    pub async fn get(&self, path: &str, cookie: Option<&str>) -> (u16, String) {
        let mut req = http::Request::get(format!("http://{}{path}", self.gateway));
        if let Some(c) = cookie {
            req = req.header(http::header::COOKIE, c);
        }
        match self.request(req.body(Full::default()).unwrap()).await {
            Ok((status, _, body)) => (status, body),
            Err(e) => (0, e),
        }
    }

    /// The product page: which reviews version served it, the page, and how long it took.
    pub async fn page(&self, cookie: Option<&str>) -> (Option<&'static str>, String, Duration) {
        let t = Instant::now();
        let (status, body) = self.get("/productpage", cookie).await;
        let took = t.elapsed();
        assert!(
            status == 200,
            "GET /productpage: {status} {}",
            &body[..body.len().min(300)]
        );
        (version(&body), body, took)
    }

    /// Logs in through the gateway as Istio's task does; returns the cookie to send.
    pub async fn login(&self, user: &str) -> String {
        let req = http::Request::post(format!("http://{}/login", self.gateway))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::from(format!("username={user}&passwd=x")))
            .unwrap();
        let (status, headers, _) = self.request(req).await.expect("POST /login");
        assert!(status < 400, "login answered {status}");
        let cookie = headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
            .collect::<Vec<_>>()
            .join("; ");
        assert!(!cookie.is_empty(), "login set no cookie");
        cookie
    }

    /// `/workloads` of the supervisor, or `None` while it does not answer.
    pub async fn workloads(&self) -> Option<Vec<Value>> {
        let req = http::Request::get(format!("http://{}/workloads", self.admin))
            .body(Full::default())
            .unwrap();
        let (status, _, body) = self.request(req).await.ok()?;
        if status != 200 {
            return None;
        }
        match serde_json::from_str(&body).ok()? {
            Value::Array(rows) => Some(rows),
            _ => None,
        }
    }

    /// Waits until every workload is ready and the page answers; records the pids.
    pub async fn wait_ready(&mut self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            assert!(
                Instant::now() < deadline,
                "bookinfo up did not become ready"
            );
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("bookinfo up exited: {status}");
            }
            if let Some(rows) = self.workloads().await
                && rows.len() == 7
                && rows.iter().all(|r| r["state"] == "ready")
            {
                self.remember(&rows);
                // Every workload learns of the others through the store: wait for a page
                // with reviews.
                let (status, page) = self.get("/productpage", None).await;
                if status == 200 && version(&page).is_some() {
                    return rows;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn remember(&mut self, rows: &[Value]) {
        for r in rows {
            if let Some(pid) = r["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
                && !self.seen_pids.contains(&pid)
            {
                self.seen_pids.push(pid);
            }
        }
    }

    /// Applies Istio files to the running mesh; returns when the store has them.
    pub async fn apply(&self, files: &[&str]) -> Instant {
        apply(&self.config_dir(), files).await;
        Instant::now()
    }

    /// Loads the page until `n` loads in a row satisfy `ok`; returns when the streak began.
    pub async fn until_streak(
        &self,
        what: &str,
        cookie: Option<&str>,
        n: usize,
        patience: Duration,
        ok: impl Fn(Option<&str>, &str) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + patience;
        let mut streak = 0;
        let mut began = Instant::now();
        loop {
            let t = Instant::now();
            let (v, page, _) = self.page(cookie).await;
            if ok(v, &page) {
                if streak == 0 {
                    began = t;
                }
                streak += 1;
                if streak == n {
                    return began;
                }
            } else {
                streak = 0;
                assert!(
                    Instant::now() < deadline,
                    "{what}: not seen within {patience:?} (last: {v:?})"
                );
            }
        }
    }
}

/// Applies Istio files from `examples/bookinfo/istio/` to the store in `dir` through the
/// store API, as `meshctl apply` does.
pub async fn apply(dir: &Path, files: &[&str]) {
    let mut resources = Vec::new();
    for f in files {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("istio").join(f);
        let text = std::fs::read_to_string(&path).expect("istio file");
        let loaded = mesh_core::config::load_str(&text, Some(&path));
        assert!(loaded.findings.is_empty(), "{f}: {:?}", loaded.findings);
        resources.extend(loaded.resources);
    }
    let store = mesh_core::store::open(&format!("file:{}", dir.display())).expect("store");
    store.apply(resources).await.expect("apply");
}

/// The first of `names` found on `PATH`.
pub fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Debian's headless Chromium; the test fails, rather than skips, without it.
pub fn chromium() -> PathBuf {
    find_on_path(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
        panic!(
            "headless Chromium is needed for this test and neither `chromium` nor \
             `chromium-browser` is on PATH: install Debian's `chromium` (`sudo apt-get install \
             chromium`; scripts/test does it)"
        )
    })
}

/// Loads `url` in headless Chromium (a fresh profile) and returns the DOM it rendered,
/// checking that Chromium succeeded and drew the page's SVG.
pub async fn rendered_svg_page(url: &str) -> String {
    let browser = chromium();
    let profile = tempfile::tempdir().expect("profile dir");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(&browser)
            .args([
                "--headless=new",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} --dump-dom did not finish in 90 s", browser.display()))
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.display()));
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("<svg"),
        "{} failed ({}):\nstdout:\n{dom}\nstderr:\n{}",
        browser.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}
