//! mitmproxy (`mitmdump`), the reference interception proxy, as a regular HTTP proxy on the
//! host's loopback. `scripts/bench-deps` installs it from PyPI into a venv under the bench
//! cache; it is never part of CI.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::image_bench::{on_path, BenchResult};
use crate::net_bench::free_port;

/// The venv `scripts/bench-deps` makes: `$XDG_CACHE_HOME/msbvm/bench/mitmproxy` (or under
/// `~/.cache`).
pub fn venv_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("msbvm-cache"));
    base.join("msbvm").join("bench").join("mitmproxy")
}

/// `mitmdump` to run: `$MSBVM_MITMDUMP`, else the bench venv's, else one on `PATH`; the error
/// is the one-line reason to skip the mitmproxy row.
pub fn find_mitmdump() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MSBVM_MITMDUMP") {
        return Ok(PathBuf::from(p));
    }
    let venv = venv_dir().join("bin").join("mitmdump");
    if venv.is_file() {
        return Ok(venv);
    }
    if on_path("mitmdump") {
        return Ok(PathBuf::from("mitmdump"));
    }
    Err("mitmproxy not installed (scripts/bench-deps installs it)".into())
}

/// A running `mitmdump`, stopped on drop.
pub struct Mitmdump {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// PEM of the CA its leaves chain to (the guest trusts it for this path).
    pub ca_pem: String,
    _confdir: tempfile::TempDir,
}

impl Mitmdump {
    /// Starts `program` as a regular proxy on a free loopback port with a fresh CA, verifying
    /// upstreams against the PEM file `upstream_ca` and streaming bodies over 1 MiB (its
    /// fastest documented setting for bulk transfers; by default it buffers whole bodies).
    pub fn start(program: &Path, upstream_ca: &Path) -> BenchResult<Mitmdump> {
        let confdir = tempfile::tempdir().map_err(|e| format!("mitmproxy confdir: {e}"))?;
        let port = free_port()?;
        let child = Command::new(program)
            .args(["--mode", "regular", "--listen-host", "127.0.0.1"])
            .args(["--listen-port", &port.to_string(), "-q"])
            .arg("--set")
            .arg(format!("confdir={}", confdir.path().display()))
            .arg("--set")
            .arg(format!(
                "ssl_verify_upstream_trusted_ca={}",
                upstream_ca.display()
            ))
            .args(["--set", "stream_large_bodies=1m", "--set", "flow_detail=0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        let mut proxy = Mitmdump {
            child,
            port,
            ca_pem: String::new(),
            _confdir: confdir,
        };
        proxy.wait_ready()?;
        Ok(proxy)
    }

    /// Waits until the proxy accepts connections and has written its CA.
    fn wait_ready(&mut self) -> BenchResult<()> {
        let ca_path = self._confdir.path().join("mitmproxy-ca-cert.pem");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("mitmdump exited ({status}) while starting"));
            }
            let listening = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if listening {
                if let Ok(pem) = std::fs::read_to_string(&ca_path) {
                    if pem.contains("END CERTIFICATE") {
                        self.ca_pem = pem;
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err("mitmdump did not start within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mitmdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
