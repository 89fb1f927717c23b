//! `msbvm ls`, `stop`, `rm` and `logs`: managing sandboxes by name.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use msbvm_sdk::logfile::LogTail;
use msbvm_sdk::{Error, Sandbox, SandboxDir, SandboxInfo};

/// Arguments of `msbvm ls`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct LsArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `msbvm stop`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct StopArgs {
    /// The sandboxes.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Seconds to let the guest shut down before it is forced off.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = crate::run::parse_secs)]
    pub timeout: Duration,
}

/// Arguments of `msbvm rm`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct RmArgs {
    /// The sandboxes (running ones are stopped first).
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Arguments of `msbvm detach`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct DetachArgs {
    /// Sandboxes another sandbox spawned (`PARENT.CHILD`).
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Arguments of `msbvm logs`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct LogsArgs {
    /// The sandbox.
    pub name: String,
    /// Keep printing what the guest console and the runtime log gain until the sandbox
    /// stops.
    #[arg(short, long)]
    pub follow: bool,
}

/// Runs `msbvm ls`.
pub fn ls(args: LsArgs) -> Result<u8, Error> {
    let list = Sandbox::list()?;
    let mut out = std::io::stdout().lock();
    let text = if args.json {
        serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into()) + "\n"
    } else {
        table(&list, unix_now())
    };
    let _ = out.write_all(text.as_bytes());
    Ok(0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `ls` table.
pub fn table(list: &[SandboxInfo], now: u64) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "STATUS".into(),
        "CPUS".into(),
        "MEMORY".into(),
        "CREATED".into(),
        "MODE".into(),
    ]];
    for s in list {
        rows.push([
            s.name.clone(),
            s.status.to_string(),
            s.cpus.to_string(),
            format!("{} MiB", s.memory_mib),
            age(now.saturating_sub(s.created)),
            if s.detached { "detached" } else { "attached" }.into(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// "5s ago", "3m ago", "2h ago", "4d ago".
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

/// Runs `msbvm stop`: stops each sandbox (a stopped one is fine) and prints its name.
pub async fn stop(args: StopArgs) -> Result<u8, Error> {
    for name in &args.names {
        Sandbox::stop_named(name, args.timeout).await?;
        println!("{name}");
    }
    Ok(0)
}

/// Runs `msbvm rm`.
pub async fn rm(args: RmArgs) -> Result<u8, Error> {
    for name in &args.names {
        Sandbox::remove_named(name).await?;
        println!("{name}");
    }
    Ok(0)
}

/// Runs `msbvm detach`: each sandbox spawned by another becomes the host's own (it no longer
/// stops with its parent, and the parent can no longer reach it); prints its name.
pub async fn detach(args: DetachArgs) -> Result<u8, Error> {
    for name in &args.names {
        Sandbox::get(name).await?.detach().await?;
        println!("{name}");
    }
    Ok(0)
}

/// Runs `msbvm logs`: the guest console, then the runtime log, each from its rotated part
/// on, streamed (never read whole); with `-f`, then what both gain until the sandbox stops.
pub fn logs(args: LogsArgs) -> Result<u8, Error> {
    let dir = SandboxDir::for_name(&args.name)?;
    if !dir.path().exists() {
        return Err(Error::NotFound { name: args.name });
    }
    let mut out = std::io::stdout().lock();
    let mut tails = Vec::new();
    for (title, path) in [
        ("guest console", dir.console_log()),
        ("runtime log", dir.runtime_log()),
    ] {
        let _ = writeln!(out, "==> {title} ({}) <==", path.display());
        let mut tail = LogTail::open(&path);
        let mut text = CrLf::default();
        let wrote = stream(&mut tail, &mut text, &mut out, &path)?;
        if !wrote {
            let exists = path.exists() || msbvm_sdk::logfile::rotated_path(&path).exists();
            let _ = writeln!(out, "{}", if exists { "(empty)" } else { "(none)" });
        } else if !text.at_line_start {
            let _ = writeln!(out);
        }
        tails.push((tail, text, path));
    }
    while args.follow && msbvm_sdk::state::is_live(&dir) {
        let _ = out.flush();
        std::thread::sleep(std::time::Duration::from_millis(200));
        for (tail, text, path) in &mut tails {
            stream(tail, text, &mut out, path)?;
        }
    }
    Ok(0)
}

/// Copies what `tail` has now to `out`; whether anything was written.
fn stream(
    tail: &mut LogTail,
    text: &mut CrLf,
    out: &mut impl Write,
    path: &std::path::Path,
) -> Result<bool, Error> {
    let mut wrote = false;
    tail.read_new(&mut |chunk| {
        wrote = true;
        // A closed stdout (`| head`) ends the copy quietly.
        let _ = out.write_all(&text.convert(chunk));
        Ok(())
    })
    .map_err(|e| Error::Io {
        context: format!("reading {}", path.display()),
        source: e,
    })?;
    Ok(wrote)
}

/// Turns the serial console's CR LF line ends into LF across chunk boundaries.
#[derive(Default)]
struct CrLf {
    held_cr: bool,
    at_line_start: bool,
}

impl CrLf {
    fn convert(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 1);
        for &b in chunk {
            if self.held_cr && b != b'\n' {
                out.push(b'\r');
            }
            self.held_cr = b == b'\r';
            if !self.held_cr {
                out.push(b);
            }
        }
        if let Some(&last) = out.last() {
            self.at_line_start = last == b'\n';
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_sdk::Status;

    #[test]
    fn crlf_becomes_lf_across_chunks() {
        let mut c = CrLf::default();
        let mut out = c.convert(b"a\r");
        out.extend(c.convert(b"\nb\rc\r\n"));
        assert_eq!(out, b"a\nb\rc\n");
        assert!(c.at_line_start);
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(5), "5s ago");
        assert_eq!(age(125), "2m ago");
        assert_eq!(age(7300), "2h ago");
        assert_eq!(age(3 * 86400), "3d ago");
    }

    #[test]
    fn table_aligns_columns() {
        let info = SandboxInfo {
            name: "brave-otter".into(),
            status: Status::Running,
            pid: 1,
            created: 100,
            cpus: 2,
            memory_mib: 512,
            detached: true,
            exit: None,
            dir: "/x".into(),
            parent: None,
        };
        let t = table(&[info], 130);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME         STATUS"), "{t}");
        assert!(lines[1].starts_with("brave-otter  running"), "{t}");
        assert!(
            lines[1].contains("512 MiB") && lines[1].contains("30s ago"),
            "{t}"
        );
        assert_eq!(table(&[], 0), "NAME  STATUS  CPUS  MEMORY  CREATED  MODE\n");
    }
}
