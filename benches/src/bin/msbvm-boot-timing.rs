//! `msbvm-boot-timing`: times one VMM run inside the L1 machine, the same way for every VMM.
//!
//! ```text
//! msbvm-boot-timing --vmm NAME --run N [--timeout SECS] -- PROGRAM [ARGS...]
//! ```
//!
//! Spawns the VMM with its stdout and stderr piped, timestamps (CLOCK_MONOTONIC, through
//! `Instant`) the first line containing `MSBVM-INIT-OK` on either stream and the process exit,
//! picks up msbvm's `boot-timer`/`stats` lines, and prints one result line (see
//! `msbvm_benches::Sample`). When the marker arrives it also reads the VM's exit counters from
//! KVM's debugfs in L1 (`/sys/kernel/debug/kvm/<pid>-<fd>/`, while the VM still exists) and
//! prints them on an `exits` line (see `msbvm_benches::ExitCounts`): where each VMM's guest
//! spends its boot. Timing from outside the VMM is what makes the numbers comparable
//! between VMMs that report nothing about themselves. Built static, as it runs in L1.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use msbvm_benches::{ExitCounts, Sample};
use msbvm_tests::report;

const USAGE: &str =
    "usage: msbvm-boot-timing --vmm NAME --run N [--timeout SECS] -- PROGRAM [ARGS...]";
/// Console lines kept to show when a run fails.
const TAIL_LINES: usize = 30;
/// How often the child is polled for exit: the resolution of the exit timestamp.
const POLL: Duration = Duration::from_millis(1);

/// The parsed command line.
struct Args {
    vmm: String,
    run: u32,
    timeout: Duration,
    command: Vec<String>,
}

/// Parses the command line; `Err` is the message to print.
fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut vmm, mut run, mut timeout) = (None, 1, Duration::from_secs(300));
    while let Some(a) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--vmm" => vmm = Some(value()?),
            "--run" => {
                run = value()?
                    .parse()
                    .map_err(|_| "--run: not a number".to_string())?
            }
            "--timeout" => {
                let secs = value()?
                    .parse()
                    .map_err(|_| "--timeout: not a number".to_string())?;
                timeout = Duration::from_secs(secs);
            }
            "--" => {
                let command: Vec<String> = argv.collect();
                if command.is_empty() {
                    return Err(USAGE.into());
                }
                return Ok(Args {
                    vmm: vmm.ok_or_else(|| format!("--vmm is required\n{USAGE}"))?,
                    run,
                    timeout,
                    command,
                });
            }
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    Err(USAGE.into())
}

/// Sends each line of `stream` with the time it arrived, until EOF.
fn forward(stream: impl Read, start: Instant, tx: mpsc::Sender<(Duration, String)>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    while let Ok(n) = reader.read_until(b'\n', &mut buf) {
        if n == 0 {
            break;
        }
        let at = start.elapsed();
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        if tx.send((at, line)).is_err() {
            break;
        }
        buf.clear();
    }
}

/// Milliseconds of a duration.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What one run measured.
struct Measured {
    sample: Sample,
    /// The VM's exit counters at the init marker, if KVM's debugfs is there.
    exits: Option<Vec<(String, u64)>>,
    /// The last console lines.
    tail: VecDeque<String>,
}

/// Runs and times the VMM.
fn measure(args: &Args) -> Result<Measured, String> {
    let start = Instant::now();
    let mut child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.command[0]))?;
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    std::thread::spawn(move || forward(out, start, tx));
    std::thread::spawn(move || forward(err, start, tx2));

    let pid = child.id();
    let mut init_at = None;
    let mut exits = None;
    let mut machine_lines = String::new();
    let mut tail = VecDeque::new();
    let mut note = |(at, line): (Duration, String)| {
        if init_at.is_none() && line.contains(report::INIT_OK) {
            init_at = Some(at);
            exits = ExitCounts::of_pid(pid);
            if let Some(memory) = msbvm_benches::vmm_memory(pid) {
                exits.get_or_insert_with(Vec::new).extend(memory);
            }
        }
        if line.contains("msbvm: ") {
            machine_lines.push_str(&line);
            machine_lines.push('\n');
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    };

    let deadline = start + args.timeout;
    let (exit_at, status) = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("wait: {e}"))? {
            break (start.elapsed(), status);
        }
        if Instant::now() >= deadline {
            // Our own child, killed by handle; the run is reported with status 137.
            let _ = child.kill();
            let status = child.wait().map_err(|e| format!("wait: {e}"))?;
            break (start.elapsed(), status);
        }
        while let Ok(event) = rx.recv_timeout(POLL) {
            note(event);
        }
    };
    // The rest of the output, until both pipes close (bounded, in case a grandchild keeps them).
    let drain_until = Instant::now() + Duration::from_secs(5);
    while let Ok(event) = rx.recv_timeout(drain_until.saturating_duration_since(Instant::now())) {
        note(event);
    }
    let status = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let sample = Sample {
        vmm: args.vmm.clone(),
        run: args.run,
        status,
        init_ms: init_at.map(ms),
        exit_ms: ms(exit_at),
        boot_timer_ms: report::boot_timer_ms(&machine_lines),
        stats: report::stats(&machine_lines),
    };
    Ok(Measured {
        sample,
        exits,
        tail,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("msbvm-boot-timing: {msg}");
            return ExitCode::from(2);
        }
    };
    match measure(&args) {
        Ok(Measured {
            sample,
            exits,
            tail,
        }) => {
            if !sample.ok() {
                println!(
                    "msbvm-boot-timing: {} run {} failed; last output:",
                    args.vmm, args.run
                );
                for line in tail {
                    println!("  | {line}");
                }
            }
            println!("{}", sample.to_line());
            if let Some(exits) = exits {
                println!("{}", ExitCounts::to_line(&exits, &args.vmm, args.run));
            }
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("msbvm-boot-timing: {msg}");
            ExitCode::FAILURE
        }
    }
}
