//! `msbvm events`, `emit` and `request`: events between the host and a running sandbox's
//! guest programs.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use msbvm_sdk::events::{Event, EventTarget};
use msbvm_sdk::{Error, Sandbox};

/// Arguments of `msbvm events`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct EventsArgs {
    /// The sandbox.
    pub name: String,
    /// Keep printing new events until the sandbox stops (otherwise print the events kept
    /// while nobody listened and end).
    #[arg(short, long)]
    pub follow: bool,
    /// Only events of this type (`t`, or `prefix.*`); repeatable.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// One JSON object per line (type, data, id, reply_to, pid, exec, connection, time_ms).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `msbvm emit`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct EmitArgs {
    /// The sandbox.
    pub name: String,
    /// The event's type.
    #[arg(value_name = "TYPE")]
    pub kind: String,
    /// Its data, as JSON (default `null`).
    #[arg(value_name = "JSON")]
    pub data: Option<String>,
    /// Only to the processes of this exec (its pid) instead of the subscribers.
    #[arg(long, value_name = "PID", conflicts_with = "connection")]
    pub exec: Option<u32>,
    /// Only to this guest connection (an event's `connection`).
    #[arg(long, value_name = "ID")]
    pub connection: Option<u64>,
    /// The id of the guest event this answers (its sender reads the reply on its
    /// connection: give `--connection` too).
    #[arg(long, value_name = "ID")]
    pub reply_to: Option<String>,
}

/// Arguments of `msbvm request`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct RequestArgs {
    /// The sandbox.
    pub name: String,
    /// The event's type.
    #[arg(value_name = "TYPE")]
    pub kind: String,
    /// Its data, as JSON (default `null`).
    #[arg(value_name = "JSON")]
    pub data: Option<String>,
    /// Seconds to wait for the guest's reply.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = crate::run::parse_secs)]
    pub timeout: Duration,
}

fn parse_data(data: Option<&str>) -> Result<serde_json::Value, Error> {
    match data {
        None => Ok(serde_json::Value::Null),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Error::InvalidConfig(format!("the event data is not JSON ({e}): {text}"))),
    }
}

/// One line for a person: time, type, sender, data.
pub fn human_line(e: &Event) -> String {
    let secs = e.time_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let from = match (e.pid, e.exec) {
        (None, _) => "msbvm".to_string(),
        (Some(pid), Some(exec)) => format!("pid {pid} (exec {exec})"),
        (Some(pid), None) => format!("pid {pid}"),
    };
    let mut line = format!(
        "{h:02}:{m:02}:{s:02}.{:03} {} from {from}: {}",
        e.time_ms % 1000,
        e.kind,
        e.data
    );
    if let Some(id) = &e.id {
        line.push_str(&format!(" [id {id}]"));
    }
    if let Some(r) = &e.reply_to {
        line.push_str(&format!(" [reply to {r}]"));
    }
    line
}

fn print(e: &Event, json: bool) -> bool {
    let line = if json {
        e.to_json().to_string()
    } else {
        human_line(e)
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// Runs `msbvm events`.
pub async fn events(args: EventsArgs) -> Result<u8, Error> {
    let sandbox = Sandbox::get(&args.name).await?;
    let types: Vec<&str> = args.types.iter().map(String::as_str).collect();
    let mut stream = if args.follow {
        sandbox.events(&types).await?
    } else {
        sandbox.pending_events(&types).await?
    };
    while let Some(event) = stream.next().await {
        if !print(&event?, args.json) {
            // stdout closed (`| head`): done.
            break;
        }
    }
    Ok(0)
}

/// Runs `msbvm emit`.
pub async fn emit(args: EmitArgs) -> Result<u8, Error> {
    let data = parse_data(args.data.as_deref())?;
    let target = match (args.exec, args.connection) {
        (Some(pid), _) => EventTarget::Exec(pid),
        (None, Some(c)) => EventTarget::Connection(c),
        (None, None) => EventTarget::Subscribers,
    };
    let sandbox = Sandbox::get(&args.name).await?;
    sandbox
        .emit_event(target, &args.kind, data, args.reply_to)
        .await?;
    Ok(0)
}

/// Runs `msbvm request`: prints the reply as JSON.
pub async fn request(args: RequestArgs) -> Result<u8, Error> {
    let data = parse_data(args.data.as_deref())?;
    let sandbox = Sandbox::get(&args.name).await?;
    let reply = sandbox.request(&args.kind, data, args.timeout).await?;
    println!("{}", reply.to_json());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_must_be_json() {
        assert_eq!(parse_data(None).unwrap(), serde_json::Value::Null);
        assert_eq!(parse_data(Some("{\"a\":1}")).unwrap()["a"], 1);
        let e = parse_data(Some("{oops")).unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn human_lines_name_the_sender() {
        let e = Event {
            kind: "progress".into(),
            data: serde_json::json!({"pct": 50}),
            id: Some("7".into()),
            reply_to: None,
            pid: Some(42),
            exec: Some(40),
            connection: Some(1),
            time_ms: 3_723_004,
        };
        assert_eq!(
            human_line(&e),
            "01:02:03.004 progress from pid 42 (exec 40): {\"pct\":50} [id 7]"
        );
    }
}
