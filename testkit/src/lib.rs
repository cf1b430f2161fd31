//! Real components for the workspace's tests, started on loopback with free ports.
//!
//! - [`EtcdCluster`] runs `/usr/bin/etcd` (Debian's `etcd-server` package) as one member or
//!   several, each on free loopback ports with its own temporary data directory. Members can
//!   be stopped and started again to test what the mesh does when etcd goes away; every
//!   member is killed when the cluster is dropped.
//! - [`otlp`]: an OpenTelemetry collector (OTLP/gRPC trace receiver) that keeps the spans it
//!   is sent.
//!
//! # Examples
//! ```no_run
//! # async fn run() -> Result<(), testkit::EtcdError> {
//! let mut cluster = testkit::EtcdCluster::start(3).await?;
//! println!("store at {}", cluster.store_url()); // etcd://127.0.0.1:41234,127.0.0.1:…
//! cluster.stop_member(0).await?;
//! cluster.start_member(0).await?;
//! # Ok(()) }
//! ```

use std::{
    fmt,
    fs::File,
    io,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod otlp;

/// Where the etcd binary is looked for unless `ETCD_BIN` names another.
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";

/// How long [`EtcdCluster::wait_healthy`] waits by default.
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

/// Starting or stopping etcd failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum EtcdError {
    /// The etcd binary is not installed.
    Missing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The process could not be started, stopped or its files written.
    Io {
        /// What was being done.
        op: String,
        /// The cause.
        source: io::Error,
    },
    /// A member did not become healthy in time.
    Unhealthy {
        /// The member's client URL.
        endpoint: String,
        /// The end of the member's log.
        log: String,
    },
    /// No member has that index.
    NoSuchMember(usize),
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::Missing { path } => write!(
                f,
                "no etcd binary at {} (install it: apt-get install -y etcd-server, or set ETCD_BIN)",
                path.display()
            ),
            EtcdError::Io { op, .. } => write!(f, "cannot {op}"),
            EtcdError::Unhealthy { endpoint, log } => {
                write!(
                    f,
                    "etcd at {endpoint} did not become healthy; its log ends:\n{log}"
                )
            }
            EtcdError::NoSuchMember(i) => write!(f, "the cluster has no member {i}"),
        }
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EtcdError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> EtcdError {
    let op = op.into();
    move |source| EtcdError::Io { op, source }
}

/// One etcd member: its ports, data directory and process (when running).
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A single etcd node or a cluster of members on loopback ports, killed when dropped.
pub struct EtcdCluster {
    bin: PathBuf,
    token: String,
    members: Vec<Member>,
    // Dropped last: the members' data lives here.
    _dir: tempfile::TempDir,
}

impl fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("running", &self.running())
            .finish()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

/// A free loopback port (bound once with port 0, then released).
fn free_port() -> Result<u16, EtcdError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("bind a free loopback port"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(io_err("read a bound port"))
}

impl EtcdCluster {
    /// Starts one etcd node and waits until it is healthy.
    ///
    /// # Errors
    /// [`EtcdError::Missing`] when etcd is not installed; otherwise what
    /// [`start`](Self::start) fails with.
    pub async fn single() -> Result<Self, EtcdError> {
        Self::start(1).await
    }

    /// Starts a cluster of `members` members and waits until it is healthy (has a leader).
    ///
    /// # Errors
    /// [`EtcdError::Missing`] when the binary is missing, [`EtcdError::Unhealthy`] when the
    /// cluster does not become healthy within [`HEALTHY_TIMEOUT`].
    pub async fn start(members: usize) -> Result<Self, EtcdError> {
        let bin =
            std::env::var_os("ETCD_BIN").map_or_else(|| DEFAULT_ETCD_BIN.into(), PathBuf::from);
        if !bin.is_file() {
            return Err(EtcdError::Missing { path: bin });
        }
        let dir = tempfile::Builder::new()
            .prefix("testkit-etcd-")
            .tempdir()
            .map_err(io_err("create a temporary directory"))?;
        let mut list = Vec::with_capacity(members);
        for i in 0..members.max(1) {
            list.push(Member {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            });
        }
        let mut cluster = Self {
            bin,
            token: format!("testkit-{}-{}", std::process::id(), list[0].client_port),
            members: list,
            _dir: dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(HEALTHY_TIMEOUT).await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), EtcdError> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let m = self.members.get_mut(i).ok_or(EtcdError::NoSuchMember(i))?;
        if m.child.is_some() {
            return Ok(());
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(io_err(format!("open {}", m.log.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io_err(format!("open {}", m.log.display())))?;
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(m.client_url())
            .arg("--advertise-client-urls")
            .arg(m.client_url())
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            // Fast elections: loopback has no latency to speak of.
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err(format!("start {}", self.bin.display())))?;
        m.child = Some(child);
        Ok(())
    }

    /// The members' client endpoints, `127.0.0.1:PORT`, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The store URL for every member: `etcd://127.0.0.1:A,127.0.0.1:B,…`.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// How many members there are, running or not.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True if the cluster has no member (never, once started).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Which members are running.
    pub fn running(&self) -> Vec<bool> {
        self.members.iter().map(|m| m.child.is_some()).collect()
    }

    /// The data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> Option<&Path> {
        self.members.get(i).map(|m| m.data_dir.as_path())
    }

    /// Kills member `i` (SIGKILL, as a crash or a pulled plug) and waits for it to exit.
    ///
    /// # Errors
    /// [`EtcdError::NoSuchMember`].
    pub async fn stop_member(&mut self, i: usize) -> Result<(), EtcdError> {
        let m = self.members.get_mut(i).ok_or(EtcdError::NoSuchMember(i))?;
        m.kill();
        Ok(())
    }

    /// Kills every member.
    pub async fn stop_all(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Starts member `i` again on its old ports and data, and waits until it answers healthy.
    ///
    /// # Errors
    /// The process cannot be started, or it does not become healthy in time.
    pub async fn start_member(&mut self, i: usize) -> Result<(), EtcdError> {
        self.spawn(i)?;
        self.wait_member(i, HEALTHY_TIMEOUT).await
    }

    /// Starts every stopped member again and waits until the cluster is healthy.
    ///
    /// # Errors
    /// As [`start_member`](Self::start_member).
    pub async fn start_all(&mut self) -> Result<(), EtcdError> {
        for i in 0..self.members.len() {
            self.spawn(i)?;
        }
        self.wait_healthy(HEALTHY_TIMEOUT).await
    }

    /// Waits until every running member answers `/health` with `true` (it sees a leader).
    ///
    /// # Errors
    /// [`EtcdError::Unhealthy`] with the end of the first unhealthy member's log.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), EtcdError> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_some() {
                self.wait_member(i, timeout).await?;
            }
        }
        Ok(())
    }

    async fn wait_member(&self, i: usize, timeout: Duration) -> Result<(), EtcdError> {
        let m = self.members.get(i).ok_or(EtcdError::NoSuchMember(i))?;
        let start = Instant::now();
        loop {
            if health(m.client_port).await {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(EtcdError::Unhealthy {
                    endpoint: m.client_url(),
                    log: m.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// True if etcd on `port` answers `GET /health` with `"health":"true"`.
async fn health(port: u16) -> bool {
    let check = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body.contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(2), check)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_stops_and_restarts_a_single_node() {
        let mut etcd = EtcdCluster::single().await.expect("etcd starts");
        assert_eq!(etcd.endpoints().len(), 1);
        assert!(etcd.store_url().starts_with("etcd://127.0.0.1:"));
        let port = etcd.members[0].client_port;
        assert!(health(port).await);
        etcd.stop_member(0).await.unwrap();
        assert!(!health(port).await);
        etcd.start_member(0).await.unwrap();
        assert!(health(port).await);
    }

    #[tokio::test]
    async fn names_the_package_when_the_binary_is_missing() {
        let e = EtcdError::Missing {
            path: "/nonexistent/etcd".into(),
        };
        assert!(
            e.to_string().contains("apt-get install -y etcd-server"),
            "{e}"
        );
    }
}
