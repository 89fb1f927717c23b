//! Progress reporting for the kernel build: a live bar on a terminal, periodic plain lines in
//! logs (CI), or nothing.
//!
//! The build has three stages whose progress can be measured: extracting the source (bytes of
//! the tarball read), configuring (no measure, a spinner) and compiling (kbuild's step lines
//! against the step count of the previous build).

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How a build reports progress on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A live progress bar (for terminals).
    Bar,
    /// A plain line at each stage and every [`LINE_INTERVAL`] during long stages (for logs).
    Lines,
    /// No output.
    Quiet,
}

impl Progress {
    /// [`Progress::Bar`] when stderr is a terminal, else [`Progress::Lines`].
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines
        }
    }
}

/// How often [`Progress::Lines`] repeats a line during a long stage: often enough to show a
/// CI job is alive, rarely enough not to flood its log.
pub const LINE_INTERVAL: Duration = Duration::from_secs(15);

const PREFIX: &str = "msbvm: kernel build";

/// The build's side of progress reporting.
pub(crate) struct Reporter {
    mode: Progress,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    stage: &'static str,
    done: u64,
    total: u64,
}

impl Reporter {
    pub(crate) fn new(mode: Progress) -> Self {
        let now = Instant::now();
        Reporter {
            mode,
            bar: None,
            started: now,
            last_line: now,
            stage: "",
            done: 0,
            total: 0,
        }
    }

    /// Another build of the same kernel holds the lock; this one waits.
    pub(crate) fn waiting(mode: Progress, lock: &Path) {
        if mode != Progress::Quiet {
            eprintln!(
                "{PREFIX}: waiting for another build of the same kernel to finish (lock {})",
                lock.display()
            );
        }
    }

    /// Starts a stage. `total` is its measure (0 for a stage without one); `unit` names it.
    pub(crate) fn stage(&mut self, name: &'static str, total: u64, unit: &'static str) {
        self.stage = name;
        self.done = 0;
        self.total = total;
        self.last_line = Instant::now();
        match self.mode {
            Progress::Quiet => {}
            Progress::Lines => eprintln!("{PREFIX}: {name}"),
            Progress::Bar => {
                if let Some(old) = self.bar.take() {
                    old.finish_and_clear();
                }
                let bar = if total == 0 {
                    let bar = ProgressBar::new_spinner();
                    bar.set_style(style("{spinner} {prefix}: {msg} [{elapsed}]"));
                    bar
                } else {
                    let bar = ProgressBar::new(total);
                    let template = if unit == "bytes" {
                        "{prefix}: {msg} [{elapsed}] {wide_bar} {bytes}/{total_bytes}"
                    } else {
                        "{prefix}: {msg} [{elapsed}] {wide_bar} {pos}/{len} steps (eta {eta})"
                    };
                    bar.set_style(style(template));
                    bar
                };
                bar.set_prefix(PREFIX);
                bar.set_message(name);
                bar.enable_steady_tick(Duration::from_millis(200));
                self.bar = Some(bar);
            }
        }
    }

    /// Sets the current stage's progress to `done` units.
    pub(crate) fn set(&mut self, done: u64) {
        self.done = done;
        // The total is an estimate (last build's step count); grow it rather than show >100%.
        if done > self.total && self.total != 0 {
            self.total = done;
        }
        match self.mode {
            Progress::Quiet => {}
            Progress::Bar => {
                if let Some(bar) = &self.bar {
                    if bar.length().is_some_and(|len| done > len) {
                        bar.set_length(done);
                    }
                    bar.set_position(done);
                }
            }
            Progress::Lines => {
                if self.last_line.elapsed() >= LINE_INTERVAL {
                    self.last_line = Instant::now();
                    eprintln!("{PREFIX}: {}", status_line(self.stage, done, self.total));
                }
            }
        }
    }

    /// The build finished; the image is at `image`.
    pub(crate) fn finish(&mut self, image: &Path) {
        let message = format!(
            "done in {}, image {}",
            format_duration(self.started.elapsed()),
            image.display()
        );
        match self.mode {
            Progress::Quiet => {}
            Progress::Lines => eprintln!("{PREFIX}: {message}"),
            Progress::Bar => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                eprintln!("{PREFIX}: {message}");
            }
        }
    }

    /// The build failed; leaves the bar where it stopped so the user sees which stage.
    pub(crate) fn fail(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon_with_message(format!("{} failed", self.stage));
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        // A bar left ticking would keep redrawing over whatever the caller prints next.
        self.fail();
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants of this module; a typo is a bug caught by the tests.
    ProgressStyle::with_template(template)
        .expect("valid progress template")
        .progress_chars("=> ")
}

/// The text of one periodic line: "compiling: 300/1500 (20%)".
fn status_line(stage: &str, done: u64, total: u64) -> String {
    if total == 0 {
        return format!("{stage}: still running");
    }
    // Never claim 100% before the stage has actually ended.
    let percent = (done * 100 / total).min(99);
    format!("{stage}: {done}/{total} ({percent}%)")
}

fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            status_line("compiling", 300, 1500),
            "compiling: 300/1500 (20%)"
        );
        assert_eq!(
            status_line("compiling", 1500, 1500),
            "compiling: 1500/1500 (99%)"
        );
        assert_eq!(
            status_line("configuring", 0, 0),
            "configuring: still running"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_secs(269)), "4m29s");
    }

    #[test]
    fn templates_are_valid() {
        for mode in [Progress::Bar, Progress::Lines, Progress::Quiet] {
            let mut r = Reporter::new(mode);
            r.stage("extracting", 10, "bytes");
            r.set(5);
            r.stage("configuring", 0, "");
            r.stage("compiling", 2, "steps");
            r.set(1);
            r.set(2);
            r.set(3);
            assert_eq!(r.total, 3, "the estimate grows instead of overflowing");
            r.finish(Path::new("/x/vmlinux"));
        }
    }
}
