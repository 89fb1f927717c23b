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

/// One pull step in a flat form, for callers that pass progress on as data (the Python and
/// Node.js bindings): `kind` names the [`PullProgress`] method (`"download_started"`, ...),
/// `id` is the blob's digest or the layer's diff id. `done` is bytes on disk for the download
/// steps (those already there for `download_started`) and 1 or 0 for "was cached" on the
/// finished steps; `total` is the blob's size on `download_started` and 0 otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullStep<'a> {
    /// Which step: the name of the [`PullProgress`] method.
    pub kind: &'static str,
    /// The blob or layer.
    pub id: &'a str,
    /// Bytes, or the cached flag.
    pub done: u64,
    /// The blob's size, where known.
    pub total: u64,
}

/// Hands every pull step to a closure as a [`PullStep`].
pub struct ProgressFn<F>(pub F);

impl<F: Fn(PullStep<'_>) + Send + Sync> PullProgress for ProgressFn<F> {
    fn download_started(&self, digest: &str, total: u64, resumed_from: u64) {
        self.step("download_started", digest, resumed_from, total);
    }
    fn download_progress(&self, digest: &str, done: u64) {
        self.step("download_progress", digest, done, 0);
    }
    fn download_finished(&self, digest: &str, cached: bool) {
        self.step("download_finished", digest, u64::from(cached), 0);
    }
    fn unpack_started(&self, diff_id: &str) {
        self.step("unpack_started", diff_id, 0, 0);
    }
    fn unpack_finished(&self, diff_id: &str, cached: bool) {
        self.step("unpack_finished", diff_id, u64::from(cached), 0);
    }
}

impl<F: Fn(PullStep<'_>)> ProgressFn<F> {
    fn step(&self, kind: &'static str, id: &str, done: u64, total: u64) {
        (self.0)(PullStep {
            kind,
            id,
            done,
            total,
        });
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_fn_flattens_every_step() {
        let seen = Mutex::new(Vec::new());
        let p = ProgressFn(|s: PullStep<'_>| {
            seen.lock()
                .unwrap()
                .push((s.kind, s.id.to_string(), s.done, s.total))
        });
        p.download_started("sha256:a", 100, 10);
        p.download_progress("sha256:a", 50);
        p.download_finished("sha256:a", true);
        p.unpack_started("sha256:d");
        p.unpack_finished("sha256:d", false);
        let seen = seen.into_inner().unwrap();
        let kinds: Vec<_> = seen.iter().map(|s| s.0).collect();
        assert_eq!(
            kinds,
            [
                "download_started",
                "download_progress",
                "download_finished",
                "unpack_started",
                "unpack_finished"
            ]
        );
        assert_eq!(seen[0], ("download_started", "sha256:a".into(), 10, 100));
        assert_eq!(seen[1].2, 50);
        assert_eq!(seen[2].2, 1);
        assert_eq!(seen[4], ("unpack_finished", "sha256:d".into(), 0, 0));
    }
}
