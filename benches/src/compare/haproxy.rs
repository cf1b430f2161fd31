//! The sidecar pattern: two HAProxy processes (Debian's package), client → proxy-out →
//! proxy-in → server, configured per run in the run's directory.
//!
//! Each proxy runs with `nbthread 1`: a sidecar is sized per pod, usually with one or two
//! worker threads (Envoy's sidecar default in Istio is 2 for the whole pod), and with
//! several processes of a path sharing the machine's cores, one thread each keeps the
//! proxies from competing with the client and the server for cores they would not get in a
//! pod either. Keep-alive on both sides and `http-reuse always`; HTTP/2 (`proto h2`, or ALPN
//! `h2` over TLS) on every hop of the HTTP/2 runs.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{Http, pki::PkiFiles};

/// An HAProxy executable that answered `-v`.
#[derive(Debug)]
pub(crate) struct HaProxy {
    exe: PathBuf,
    /// The first line of `haproxy -v`.
    pub(crate) version: String,
}

impl HaProxy {
    /// Checks that `exe` runs.
    pub(crate) fn find(exe: &Path) -> anyhow::Result<Self> {
        let out = Command::new(exe)
            .arg("-v")
            .output()
            .with_context(|| format!("running `{} -v`", exe.display()))?;
        if !out.status.success() {
            bail!("`{} -v` failed: {}", exe.display(), out.status);
        }
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            exe: exe.to_owned(),
            version,
        })
    }

    /// Starts the two proxies in front of `app`; returns the address the client calls and
    /// the processes.
    ///
    /// The ports are found free and released before HAProxy binds them (it takes them from
    /// its configuration): if another process takes one meanwhile, HAProxy exits at start
    /// and the pair is started again on other ports (three attempts).
    pub(crate) fn start_pair(
        &self,
        dir: &Path,
        app: SocketAddr,
        http: Http,
        pki: Option<&PkiFiles>,
    ) -> anyhow::Result<(SocketAddr, Vec<(&'static str, Child)>)> {
        let mut attempt = 1;
        loop {
            match self.try_start_pair(dir, app, http, pki) {
                Err(e) if attempt < 3 => {
                    eprintln!(
                        "HAProxy did not start (attempt {attempt}): {e:#}; trying other ports"
                    );
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    fn try_start_pair(
        &self,
        dir: &Path,
        app: SocketAddr,
        http: Http,
        pki: Option<&PkiFiles>,
    ) -> anyhow::Result<(SocketAddr, Vec<(&'static str, Child)>)> {
        let front = free_port()?;
        let middle = free_port()?;
        let (out_cfg, in_cfg) = configs(front, middle, app, http, pki.map(|p| p.dir.as_path()));
        let mut children: Vec<(&'static str, Child)> = Vec::new();
        // The server side first, so the client side's first connections find it.
        for (role, name, text, port) in [
            ("proxy-in", "proxy-in.cfg", in_cfg, middle),
            ("proxy-out", "proxy-out.cfg", out_cfg, front),
        ] {
            let file = dir.join(name);
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
            let mut child = Command::new(&self.exe)
                .arg("-db")
                .arg("-f")
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| {
                    format!("starting {} -f {}", self.exe.display(), file.display())
                })?;
            if let Err(e) = wait_listening(&mut child, port) {
                let _ = child.kill();
                let _ = child.wait();
                for (_, mut started) in children {
                    let _ = started.kill();
                    let _ = started.wait();
                }
                return Err(e.context(format!("HAProxy with {}", file.display())));
            }
            children.push((role, child));
        }
        Ok((SocketAddr::from(([127, 0, 0, 1], front)), children))
    }
}

fn free_port() -> anyhow::Result<u16> {
    // Bound and released at once: HAProxy needs the number in its configuration.
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn wait_listening(child: &mut Child, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited at start ({status}); see its messages above");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not listening on port {port} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

const GLOBAL: &str = "global
    nbthread 1
    maxconn 4000
    tune.bufsize 16384

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
";

/// The client-side and server-side configurations.
fn configs(
    front: u16,
    middle: u16,
    app: SocketAddr,
    http: Http,
    pki: Option<&Path>,
) -> (String, String) {
    let h2 = http == Http::H2;
    let plain_h2 = if h2 { " proto h2" } else { "" };
    let (upstream, listen) = match pki {
        None => (plain_h2.to_owned(), plain_h2.to_owned()),
        Some(dir) => {
            let d = dir.display();
            (
                format!(
                    " ssl verify required ca-file {d}/ca.pem crt {d}/client.pem sni str(localhost) verifyhost localhost alpn {}",
                    if h2 { "h2" } else { "http/1.1" }
                ),
                format!(
                    " ssl crt {d}/server.pem ca-file {d}/ca.pem verify required alpn h2,http/1.1"
                ),
            )
        }
    };
    let out = format!(
        "{GLOBAL}
frontend out
    bind 127.0.0.1:{front}{plain_h2}
    default_backend mesh

backend mesh
    server proxy-in 127.0.0.1:{middle}{upstream}
"
    );
    let inn = format!(
        "{GLOBAL}
frontend in
    bind 127.0.0.1:{middle}{listen}
    default_backend app

backend app
    server app {app}{plain_h2}
"
    );
    (out, inn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtls_h2_configs() {
        let app = SocketAddr::from(([127, 0, 0, 1], 9000));
        let (out, inn) = configs(1000, 2000, app, Http::H2, Some(Path::new("/p")));
        assert!(out.contains("bind 127.0.0.1:1000 proto h2\n"));
        assert!(out.contains(
            "server proxy-in 127.0.0.1:2000 ssl verify required ca-file /p/ca.pem crt /p/client.pem"
        ));
        assert!(out.contains("alpn h2\n"));
        assert!(inn.contains(
            "bind 127.0.0.1:2000 ssl crt /p/server.pem ca-file /p/ca.pem verify required"
        ));
        assert!(inn.contains("server app 127.0.0.1:9000 proto h2\n"));
        assert!(out.contains("nbthread 1"));
    }

    #[test]
    fn plain_h1_configs() {
        let app = SocketAddr::from(([127, 0, 0, 1], 9000));
        let (out, inn) = configs(1000, 2000, app, Http::H1, None);
        assert!(out.contains("bind 127.0.0.1:1000\n"));
        assert!(out.contains("server proxy-in 127.0.0.1:2000\n"));
        assert!(inn.contains("server app 127.0.0.1:9000\n"));
        assert!(!inn.contains("ssl"));
    }
}
