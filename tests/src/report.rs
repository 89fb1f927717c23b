//! Parsing what `msbvm boot` and `msbvm-init` print, and running several `msbvm boot`s in one
//! L1 machine.
//!
//! `msbvm boot` writes machine-readable `msbvm: ...` lines to stderr and `msbvm-init` prints one
//! `MSBVM-INIT-OK ...` line on the guest console. Inside L1 both end up on the same serial
//! console, interleaved with guest kernel output, so every parser here looks for its marker
//! anywhere in a line (a stderr line can land in the middle of a half-written stdout line) and
//! takes the last match.
//!
//! Booting an L1 machine costs seconds of emulated time, so tests batch several VMM runs into
//! one L1 script ([`batch_script`]) and split the console afterwards ([`split_runs`]).

/// The line `msbvm-init` prints once the guest is up.
pub const INIT_OK: &str = "MSBVM-INIT-OK";

/// What `msbvm-init` reported: `MSBVM-INIT-OK cpus=<n> mem_total_kib=<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOk {
    /// Online CPUs seen by the guest.
    pub cpus: u32,
    /// MemTotal from the guest's /proc/meminfo, in KiB.
    pub mem_total_kib: u64,
}

/// The final line of `msbvm boot`: `msbvm: exit reason=<r> code=<n> ms=<f>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitLine {
    /// poweroff, reboot, panic, halted or error.
    pub reason: String,
    /// The guest's exit code (meaningful for poweroff).
    pub code: i64,
    /// Milliseconds since the VMM process started.
    pub ms: f64,
}

/// The memory statistics of `msbvm boot --stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Resident set size of the VMM process.
    pub vmm_rss_kib: u64,
    /// Guest memory that was actually touched.
    pub guest_resident_kib: u64,
    /// What the VMM costs beyond the guest's own memory.
    pub overhead_kib: u64,
}

/// The value of `key=value` among the whitespace-separated words that follow `marker` in
/// `line`, if the line contains the marker.
pub fn field<'a>(line: &'a str, marker: &str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// The last line of `text` containing `marker`.
fn last_line_with<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.lines().rev().find(|l| l.contains(marker))
}

/// Parses the last `MSBVM-INIT-OK` line in `text`.
pub fn init_ok(text: &str) -> Option<InitOk> {
    let line = last_line_with(text, INIT_OK)?;
    Some(InitOk {
        cpus: field(line, INIT_OK, "cpus")?.parse().ok()?,
        mem_total_kib: field(line, INIT_OK, "mem_total_kib")?.parse().ok()?,
    })
}

/// Parses the last `msbvm: exit` line in `text`.
pub fn exit_line(text: &str) -> Option<ExitLine> {
    const M: &str = "msbvm: exit ";
    let line = last_line_with(text, M)?;
    Some(ExitLine {
        reason: field(line, M, "reason")?.to_string(),
        code: field(line, M, "code")?.parse().ok()?,
        ms: field(line, M, "ms")?.parse().ok()?,
    })
}

/// Parses the last `msbvm: boot-timer ms=<f>` line in `text`.
pub fn boot_timer_ms(text: &str) -> Option<f64> {
    const M: &str = "msbvm: boot-timer ";
    field(last_line_with(text, M)?, M, "ms")?.parse().ok()
}

/// Parses the last `msbvm: stats ...` line in `text`.
pub fn stats(text: &str) -> Option<Stats> {
    const M: &str = "msbvm: stats ";
    let line = last_line_with(text, M)?;
    Some(Stats {
        vmm_rss_kib: field(line, M, "vmm_rss_kib")?.parse().ok()?,
        guest_resident_kib: field(line, M, "guest_resident_kib")?.parse().ok()?,
        overhead_kib: field(line, M, "overhead_kib")?.parse().ok()?,
    })
}

/// Marker printed by the L1 script before a batched run.
const RUN_BEGIN: &str = "=== msbvm-run begin ";
/// Marker printed by the L1 script after a batched run, with its exit status.
const RUN_END: &str = "=== msbvm-run end ";

/// One command of a batch that runs in one L1 machine.
#[derive(Debug, Clone)]
pub struct BatchRun {
    /// A single word naming the run in the console markers.
    pub label: String,
    /// The command line, already shell-quoted where needed (see [`shell_quote`]).
    pub command: String,
}

/// Quotes a word for the L1 shell (busybox sh).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Quotes and joins an argument vector into one shell command line.
pub fn shell_command<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| shell_quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An L1 shell script that runs each command in turn between begin/end markers, each under a
/// `timeout` of `per_run_secs` so that a hanging VMM shows up as status 124 or 143 for that run
/// instead of stalling the whole machine. The script itself exits 0.
pub fn batch_script(runs: &[BatchRun], per_run_secs: u64) -> String {
    let mut s = String::new();
    for run in runs {
        s.push_str(&format!(
            "echo '{RUN_BEGIN}{label} ==='\ntimeout {per_run_secs} {cmd}\necho \"{RUN_END}{label} status=$? ===\"\n",
            label = run.label,
            cmd = run.command,
        ));
    }
    s.push_str("exit 0\n");
    s
}

/// The console output of one batched run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSection {
    /// The run's label.
    pub label: String,
    /// Its exit status inside L1, if the end marker was seen.
    pub status: Option<i32>,
    /// The console lines between the markers.
    pub text: String,
}

/// Splits a console transcript of [`batch_script`] into one section per run, in order.
pub fn split_runs(console: &str) -> Vec<RunSection> {
    let mut sections: Vec<RunSection> = Vec::new();
    let mut open = false;
    for line in console.lines() {
        if let Some(rest) = marker_rest(line, RUN_BEGIN) {
            sections.push(RunSection {
                label: rest.to_string(),
                status: None,
                text: String::new(),
            });
            open = true;
        } else if let Some(rest) = marker_rest(line, RUN_END) {
            if let Some(last) = sections.last_mut() {
                last.status = field(rest, "", "status").and_then(|s| s.parse().ok());
            }
            open = false;
        } else if open {
            if let Some(last) = sections.last_mut() {
                last.text.push_str(line);
                last.text.push('\n');
            }
        }
    }
    sections
}

/// The text between a marker and the closing ` ===` in `line`.
fn marker_rest<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &line[line.find(marker)? + marker.len()..];
    Some(rest.strip_suffix(" ===").unwrap_or(rest).trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
[    0.000000] Linux version 6.12
garbageMSBVM-INIT-OK cpus=2 mem_total_kib=480000
msbvm: boot-timer ms=123.5
msbvm: stats vmm_rss_kib=9000 guest_resident_kib=30000 overhead_kib=4000
msbvm: exit reason=poweroff code=0 ms=250.25
";

    #[test]
    fn parses_msbvm_lines() {
        assert_eq!(
            init_ok(SAMPLE),
            Some(InitOk {
                cpus: 2,
                mem_total_kib: 480000
            })
        );
        assert_eq!(boot_timer_ms(SAMPLE), Some(123.5));
        let exit = exit_line(SAMPLE).unwrap();
        assert_eq!(
            (exit.reason.as_str(), exit.code, exit.ms),
            ("poweroff", 0, 250.25)
        );
        assert_eq!(stats(SAMPLE).unwrap().overhead_kib, 4000);
        assert_eq!(init_ok("nothing"), None);
        assert_eq!(exit_line("msbvm: exit reason=panic"), None);
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("/bin/msbvm"), "/bin/msbvm");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_command(&["echo", "x y"]), "echo 'x y'");
    }

    #[test]
    fn batch_round_trip() {
        let runs = [
            BatchRun {
                label: "one".into(),
                command: "true".into(),
            },
            BatchRun {
                label: "two".into(),
                command: "false".into(),
            },
        ];
        let script = batch_script(&runs, 60);
        assert!(script.contains("timeout 60 true"));
        // What the console would show when the script ran.
        let console = "=== msbvm-run begin one ===\nhello\n=== msbvm-run end one status=0 ===\n\
                       noise\n=== msbvm-run begin two ===\n=== msbvm-run end two status=1 ===\n";
        let sections = split_runs(console);
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[0].label, "one");
        assert_eq!(sections[0].status, Some(0));
        assert_eq!(sections[0].text, "hello\n");
        assert_eq!(sections[1].status, Some(1));
        assert_eq!(sections[1].text, "");
    }
}
