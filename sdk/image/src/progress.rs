//! Progress reporting for pulls: a trait the caller implements, and an indicatif one.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives pull events. Digests are `sha256:<hex>`; all methods default to doing nothing.
pub trait PullProgress: Send + Sync {
    /// A blob download begins: `total` bytes, of which `resumed_from` are already on disk.
    fn download_started(&self, _digest: &str, _total: u64, _resumed_from: u64) {}
    /// `done` bytes of the blob are on disk.
    fn download_progress(&self, _digest: &str, _done: u64) {}
    /// The blob is stored and verified; `cached` when it was already in the store.
    fn download_finished(&self, _digest: &str, _cached: bool) {}
    /// Unpacking of the layer with this diff_id begins.
    fn unpack_started(&self, _diff_id: &str) {}
    /// The layer is unpacked; `cached` when it already was.
    fn unpack_finished(&self, _diff_id: &str, _cached: bool) {}
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl PullProgress for NoProgress {}

/// Draws one byte bar per layer on a terminal (stderr), and prints one line per finished
/// step otherwise (logs, CI).
#[derive(Debug)]
pub struct IndicatifProgress {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    tty: bool,
}

impl Default for IndicatifProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl IndicatifProgress {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let target = if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
            tty,
        }
    }

    fn bar(&self, digest: &str) -> Option<ProgressBar> {
        self.bars.lock().ok()?.get(digest).cloned()
    }
}

/// `sha256:0123456789ab...` -> `0123456789ab`, as docker shows layer ids.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

impl PullProgress for IndicatifProgress {
    fn download_started(&self, digest: &str, total: u64, resumed_from: u64) {
        let bar = self.multi.add(ProgressBar::new(total));
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(short(digest).to_string());
        bar.set_position(resumed_from);
        if !self.tty && resumed_from > 0 {
            eprintln!(
                "{}: resuming download at {resumed_from} of {total} bytes",
                short(digest)
            );
        }
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(digest.to_string(), bar);
        }
    }

    fn download_progress(&self, digest: &str, done: u64) {
        if let Some(bar) = self.bar(digest) {
            bar.set_position(done);
        }
    }

    fn download_finished(&self, digest: &str, cached: bool) {
        let bar = self.bars.lock().ok().and_then(|mut b| b.remove(digest));
        match (bar, self.tty) {
            (Some(bar), true) => bar.finish(),
            (Some(bar), false) => {
                eprintln!("{}: downloaded {} bytes", short(digest), bar.position())
            }
            (None, _) if cached => {
                let _ = self
                    .multi
                    .println(format!("{}: already present", short(digest)));
                if !self.tty {
                    eprintln!("{}: already present", short(digest));
                }
            }
            (None, _) => {}
        }
    }

    fn unpack_finished(&self, diff_id: &str, cached: bool) {
        let line = if cached {
            format!("{}: layer already unpacked", short(diff_id))
        } else {
            format!("{}: layer unpacked", short(diff_id))
        };
        if self.tty {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}
