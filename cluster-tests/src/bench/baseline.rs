//! The simple service as a baseline: `cluster-tests/baseline/app.py`, a Flask app on one
//! Redis, served by gunicorn with the textbook `2 × cores + 1` sync workers. Redis appends
//! every write to its log and fsyncs it on every write (`appendfsync always`) or once a second
//! (`everysec`). Python and its packages come from `scripts/baseline-env.sh`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::free_port;

/// A running Redis and gunicorn; both are killed when it is dropped.
pub struct Baseline {
    /// The app's `host:port`.
    pub addr: String,
    redis: Child,
    gunicorn: Child,
    _dir: tempfile::TempDir,
}

impl Baseline {
    /// Starts Redis with `appendfsync` set to `fsync` (`always` or `everysec`), and the app.
    pub fn start(fsync: &str) -> anyhow::Result<Baseline> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new(repo.join("scripts/baseline-env.sh"))
            .output()
            .context("running scripts/baseline-env.sh")?;
        anyhow::ensure!(
            out.status.success(),
            "scripts/baseline-env.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let venv = PathBuf::from(String::from_utf8(out.stdout)?.trim());
        let dir = tempfile::tempdir()?;
        let redis_port = free_port("127.0.0.1");
        let log = |name: &str| std::fs::File::create(dir.path().join(name));
        let redis = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(["--appendonly", "yes", "--appendfsync", fsync, "--save", ""])
            .stdin(Stdio::null())
            .stdout(log("redis.log")?)
            .stderr(log("redis.err")?)
            .spawn()
            .context("redis-server is not installed: `apt-get install redis-server` (scripts/deps.sh bench does it)")?;
        let port = free_port("127.0.0.1");
        let addr = format!("127.0.0.1:{port}");
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let gunicorn = Command::new(venv.join("bin/gunicorn"))
            .args(["--bind", &addr, "--workers", &(2 * cores + 1).to_string()])
            .args(["--backlog", "2048", "--log-level", "warning"])
            .arg("--chdir")
            .arg(repo.join("cluster-tests/baseline"))
            .arg("app:app")
            .env("BASELINE_REDIS_PORT", redis_port.to_string())
            .stdin(Stdio::null())
            .stdout(log("gunicorn.log")?)
            .stderr(log("gunicorn.err")?)
            .spawn()
            .context("starting gunicorn")?;
        Ok(Baseline {
            addr,
            redis,
            gunicorn,
            _dir: dir,
        })
    }

    /// Redis and gunicorn's master; its workers are accounted from the master's children.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.redis.id(), self.gunicorn.id()];
        let children = format!("/proc/{0}/task/{0}/children", self.gunicorn.id());
        if let Ok(text) = std::fs::read_to_string(children) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids
    }

    /// Waits until the app answers `/healthz` (which pings Redis).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut wire = super::wire::Wire::new(&self.addr, Duration::from_secs(1));
        while !matches!(wire.get("/healthz").await, Ok(200)) {
            if Instant::now() > deadline {
                bail!(
                    "the Flask + Redis baseline on {} not ready after {timeout:?}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            wire = super::wire::Wire::new(&self.addr, Duration::from_secs(1));
        }
        Ok(())
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        // gunicorn's master stops its workers on SIGTERM; a SIGKILL would orphan them.
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        unsafe { libc::kill(self.gunicorn.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.gunicorn.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for child in [&mut self.gunicorn, &mut self.redis] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
