//! The SDK conformance scenario in Rust: the same steps and `CHECK` values as
//! `tests/l1-tools/sdk_conformance.py` and `.js`, run in L1 against real sandboxes by
//! `tests/tests/sdk_nested.rs`, so the three SDKs are held to one behaviour. One
//! `CHECK rs.name value` line per step; a step that fails prints `error:<Kind>Error`.

use std::future::Future;
use std::time::Duration;

use msbvm_sdk::spec::{NetRule, PortSpec, TmpfsSpec};
use msbvm_sdk::{ExecEvent, ExecOptions, ExitStatus, Result, Sandbox, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST_PAGE: &str = "http://host.msbvm.internal:8000/";
/// A guest shell that answers every `@P@.ask` host event with `@P@.answer` through the guest
/// CLI's `msbvm reply` (the same in every language's scenario).
const ANSWERER: &str = r#"msbvm events -f --type @P@.ask | while read -r ev; do msbvm reply "$(echo "$ev" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')" @P@.answer '{"a":3}'; done"#;

/// The shipped audit plugin, writing its record where the `plugin` step reads it.
const AUDIT_PLUGIN: &str = "audit:path=/tmp/rs-audit.jsonl";
/// The secret's value, which must never reach the guest.
const SECRET_VALUE: &str = "rs-secret-value-5be1c0d2";

/// Whether L1's `grep` finds `needle` in the file `path`: "present", "absent" or "grep-error".
fn grep_file(needle: &str, path: &std::path::Path) -> &'static str {
    match std::process::Command::new("grep")
        .args(["-q", "-F", needle])
        .arg(path)
        .status()
        .map(|s| s.code())
    {
        Ok(Some(0)) => "present",
        Ok(Some(1)) => "absent",
        _ => "grep-error",
    }
}

/// Whether a network event records a denial (a flow, or a DNS query policy refused).
fn is_denial(e: &serde_json::Value) -> bool {
    e["event"] == "flow_denied" || (e["event"] == "dns_query" && e["allowed"] == false)
}

fn check(name: &str, value: impl std::fmt::Display) {
    println!("CHECK rs.{name} {value}");
}

/// Python's spelling of a boolean, which the shared expected values use in places.
fn py(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

async fn step(name: &str, f: impl Future<Output = Result<String>>) {
    match f.await {
        Ok(v) => check(name, v),
        Err(e) => {
            eprintln!("{name}: {e}");
            check(name, format!("error:{}Error", e.kind()));
        }
    }
}

async fn wget_rc(sb: &Sandbox) -> Result<i32> {
    let out = sb
        .exec("wget", ["-q", "-T", "5", "-O", "/dev/null", HOST_PAGE])
        .await?;
    Ok(out.exit_code())
}

async fn http_get(addr: std::net::SocketAddr) -> String {
    let Ok(Ok(mut c)) =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await
    else {
        return String::new();
    };
    let mut body = Vec::new();
    if c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut body)).await;
    }
    String::from_utf8_lossy(&body).into_owned()
}

async fn scenario() -> Result<()> {
    let sb = Sandbox::builder("rs-conf")
        .memory_mib(256)
        .env("GREETING", "hi")
        .net_allow("host")
        .tmpfs(TmpfsSpec::parse("/scratch:8m")?)
        .secret(Secret::new("API_KEY", SECRET_VALUE).allow_host("api.example.com"))
        .plugin(
            msbvm_sdk::plugins::PluginSpec::parse(AUDIT_PLUGIN, std::path::Path::new("/"))
                .map_err(msbvm_sdk::Error::InvalidConfig)?,
        )
        .create()
        .await?;
    check("created", sb.name());

    step("exec", async {
        let r = sb
            .exec("sh", ["-c", "echo $GREETING; echo err >&2; exit 3"])
            .await?;
        Ok(format!(
            "{:?},{:?},{}",
            r.stdout_str(),
            r.stderr_str(),
            r.exit_code()
        ))
    })
    .await;

    step("exec_timeout", async {
        let r = sb
            .exec_with(ExecOptions::new(["sleep", "30"]).timeout(Duration::from_secs(1)))
            .await?;
        Ok(format!(
            "{},{}",
            r.status == ExitStatus::TimedOut,
            r.exit_code()
        ))
    })
    .await;

    step("stream", async {
        let n = (10 << 20).to_string();
        let mut s = sb
            .exec_stream(ExecOptions::new(["head", "-c", n.as_str(), "/dev/zero"]))
            .await?;
        let (mut total, mut code, mut started) = (0, None, false);
        while let Some(ev) = s.next_event().await? {
            match ev {
                ExecEvent::Started { .. } => started = true,
                ExecEvent::Stdout(d) => total += d.len(),
                ExecEvent::Exited(st) => code = Some(msbvm_sdk::shell_exit_code(st)),
                ExecEvent::Stderr(_) => {}
            }
        }
        Ok(format!("{total},{},{started}", code.unwrap_or(-1)))
    })
    .await;

    step("stdin", async {
        let s = sb.exec_stream(ExecOptions::new(["cat"])).await?;
        s.write_stdin(b"ping ").await?;
        s.write_stdin(b"pong").await?;
        s.close_stdin().await?;
        let out = s.collect().await?;
        Ok(format!("{},{}", out.stdout_str(), out.exit_code()))
    })
    .await;

    step("signal", async {
        let s = sb.exec_stream(ExecOptions::new(["sleep", "300"])).await?;
        s.signal(15).await?;
        Ok(s.collect().await?.exit_code().to_string())
    })
    .await;

    step("cancelled", async {
        // Dropping the call's future closes its connection; the agent kills the process group.
        let timed_out =
            tokio::time::timeout(Duration::from_secs(3), sb.exec("sleep", ["301"])).await;
        if timed_out.is_ok() {
            return Ok("not-cancelled".into());
        }
        for _ in 0..30 {
            let r = sb.exec("sh", ["-c", "ps | grep -c '[s]leep 301'"]).await?;
            if r.stdout_str().trim() == "0" {
                return Ok("nothing-left".into());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok("still-running".into())
    })
    .await;

    step("files", async {
        sb.write_file("/tmp/f.txt", "data").await?;
        let got = sb.read_file("/tmp/f.txt").await?;
        let names: Vec<String> = sb
            .list_dir("/tmp")
            .await?
            .into_iter()
            .map(|e| e.name)
            .collect();
        let st = sb.stat("/tmp/f.txt").await?;
        sb.mkdir("/tmp/a/b", true).await?;
        sb.remove_path("/tmp/a", true).await?;
        let missing = match sb.read_file("/tmp/a/b").await {
            Ok(_) => "found".to_string(),
            Err(e) => match e.file_error_kind() {
                Some(kind) => kind.snake_case().to_string(),
                None => return Err(e),
            },
        };
        let dir = std::env::temp_dir().join(format!("rs-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(msbvm_sdk::Error::io("making a directory"))?;
        std::fs::write(dir.join("in.txt"), "from-host")
            .map_err(msbvm_sdk::Error::io("writing a file"))?;
        sb.copy_in(dir.join("in.txt"), "/tmp/in.txt").await?;
        sb.copy_out("/tmp/in.txt", dir.join("out.txt")).await?;
        let copied = std::fs::read_to_string(dir.join("out.txt"))
            .map_err(msbvm_sdk::Error::io("reading a file"))?;
        Ok(format!(
            "{},{},{}:{},{missing},{copied}",
            String::from_utf8_lossy(&got),
            names.iter().any(|n| n == "f.txt"),
            st.kind.as_str(),
            st.size
        ))
    })
    .await;

    step("fork", async {
        sb.write_file("/tmp/before-snapshot", "kept").await?;
        let info = sb.snapshot("rs-snap").await?;
        let forks = Sandbox::fork("rs-snap")
            .name("rs-fork")
            .memory_mib(256)
            .create()
            .await?;
        let got = forks[0].read_file("/tmp/before-snapshot").await?;
        let r = forks[0].exec("echo", ["forked"]).await?;
        let n = forks.len();
        for f in forks {
            f.remove().await?;
        }
        Ok(format!(
            "{},{n},{},{}",
            info.source,
            String::from_utf8_lossy(&got),
            r.stdout_str().trim()
        ))
    })
    .await;

    step("publish", async {
        sb.exec(
            "sh",
            [
                "-c",
                "mkdir -p /tmp/www && echo published > /tmp/www/index.html",
            ],
        )
        .await?;
        let server = sb
            .exec_stream(ExecOptions::new([
                "httpd", "-f", "-p", "8080", "-h", "/tmp/www",
            ]))
            .await?;
        let addr = sb.publish(PortSpec::parse("127.0.0.1:0:8080")?).await?;
        let mut body = String::new();
        for _ in 0..30 {
            body = http_get(addr).await;
            if body.contains("published") {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        server.signal(15).await?;
        server.collect().await?;
        Ok(format!(
            "{},{},{}",
            addr.ip(),
            py(addr.port() > 0),
            body.matches("published").count()
        ))
    })
    .await;

    step("policy", async {
        let before = wget_rc(&sb).await?;
        sb.set_network_policy(false, Vec::new()).await?;
        let denied = wget_rc(&sb).await?;
        let host = NetRule {
            allow: true,
            rule: "host".into(),
        };
        sb.set_network_policy(false, vec![host]).await?;
        let after = wget_rc(&sb).await?;
        let word = if denied != 0 { "denied" } else { "allowed" };
        Ok(format!("{before},{word},{after}"))
    })
    .await;

    step("netlog", async {
        let mut stream = sb.network_event_stream();
        stream.poll(&mut |_| {})?;
        sb.set_network_policy(false, Vec::new()).await?;
        wget_rc(&sb).await?;
        let mut polled = Vec::new();
        for _ in 0..10 {
            stream.poll(&mut |e| polled.push(e))?;
            if polled.iter().any(is_denial) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let host = NetRule {
            allow: true,
            rule: "host".into(),
        };
        sb.set_network_policy(false, vec![host]).await?;
        let logged = sb.network_events()?.iter().any(is_denial);
        let stats: serde_json::Value = serde_json::from_str(&sb.network_stats().await?)
            .map_err(|e| msbvm_sdk::Error::Spawn(format!("stats are not JSON: {e}")))?;
        let counted = stats["flows_denied"].as_u64().unwrap_or(0) > 0;
        Ok(format!(
            "{},{},{}",
            if logged { "denied-logged" } else { "missing" },
            if polled.iter().any(is_denial) {
                "denied-polled"
            } else {
                "missing"
            },
            if counted { "counted" } else { "uncounted" }
        ))
    })
    .await;

    step("secret", async {
        let r = sb.exec("sh", ["-c", "echo $API_KEY"]).await?;
        let seen = r.stdout_str().trim().to_string();
        let word = if seen.is_empty() {
            "unset"
        } else if seen.contains(SECRET_VALUE) {
            "leaked"
        } else {
            "placeholder"
        };
        let dump = std::env::temp_dir().join("rs-conf.ram");
        let _ = std::fs::remove_file(&dump);
        let size = sb.dump_memory(&dump).await?;
        let found = format!(
            "{},{}",
            grep_file(&seen, &dump),
            grep_file(SECRET_VALUE, &dump)
        );
        let _ = std::fs::remove_file(&dump);
        Ok(format!("{word},{},{found}", size >> 20))
    })
    .await;

    step("tmpfs", async {
        let r = sb
            .exec(
                "sh",
                [
                    "-c",
                    "grep -c ' /scratch tmpfs ' /proc/mounts; df -k /scratch | tail -1 | awk '{print $2}'",
                ],
            )
            .await?;
        Ok(r.stdout_str().trim().replace('\n', ","))
    })
    .await;

    step("plugin", async {
        sb.exec("echo", ["audited-rs"]).await?;
        for _ in 0..20 {
            let record = std::fs::read_to_string("/tmp/rs-audit.jsonl").unwrap_or_default();
            let n = record
                .lines()
                .filter(|l| l.contains(r#""kind":"exec""#) && l.contains("audited-rs"))
                .count();
            if n > 0 {
                return Ok("audited".into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok("unaudited".into())
    })
    .await;

    step("reply", async {
        let mut asks = sb.events(&["rs.ask"]).await?;
        let guest = sb
            .exec_stream(ExecOptions::new([
                "msbvm",
                "request",
                "rs.ask",
                r#"{"q":1}"#,
                "--timeout",
                "60",
            ]))
            .await?;
        let Some(ask) = asks.next_timeout(Duration::from_secs(60)).await? else {
            return Ok("no-request".into());
        };
        sb.reply(&ask, "rs.answer", serde_json::json!({ "a": 2 }))
            .await?;
        let out = guest.collect().await?;
        Ok(format!(
            "{},{}",
            out.exit_code(),
            out.stdout_str().matches("rs.answer").count()
        ))
    })
    .await;

    step("request", async {
        let answerer = ANSWERER.replace("@P@", "rs");
        let guest = sb
            .exec_stream(ExecOptions::new(["sh", "-c", answerer.as_str()]))
            .await?;
        // The guest subscribes on its own schedule: ask until it answers.
        let mut answer = None;
        for _ in 0..20 {
            match sb
                .request(
                    "rs.ask",
                    serde_json::json!({ "q": 2 }),
                    Duration::from_secs(3),
                )
                .await
            {
                Ok(ev) => {
                    answer = Some(ev);
                    break;
                }
                Err(msbvm_sdk::Error::AgentTimeout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        guest.signal(15).await?;
        guest.collect().await?;
        let unanswered = match sb
            .request("rs.nobody", serde_json::Value::Null, Duration::from_secs(1))
            .await
        {
            Ok(_) => "answered".to_string(),
            Err(e) => e.kind().to_string(),
        };
        Ok(match answer {
            Some(ev) => format!("{},{},{unanswered}", ev.kind, ev.data["a"]),
            None => format!("no-answer,{unanswered}"),
        })
    })
    .await;

    step("events_in", async {
        let mut stream = sb.events(&["rs.*"]).await?;
        sb.exec("msbvm", ["emit", "rs.step", r#"{"i":1}"#]).await?;
        let Some(ev) = stream.next_timeout(Duration::from_secs(60)).await? else {
            return Ok("no-event".into());
        };
        Ok(format!(
            "{},{},{}",
            ev.kind,
            ev.data["i"],
            py(ev.pid.is_some())
        ))
    })
    .await;

    step("events_out", async {
        let s = sb
            .exec_stream(ExecOptions::new([
                "msbvm", "events", "-n", "1", "--type", "rs.reply",
            ]))
            .await?;
        let mut waiting = tokio::spawn(s.collect());
        // The guest subscribes asynchronously: send until it has one.
        let mut out = None;
        for _ in 0..60 {
            sb.emit("rs.reply", serde_json::json!({ "ok": 1 })).await?;
            if let Ok(done) = tokio::time::timeout(Duration::from_secs(1), &mut waiting).await {
                out = Some(done.map_err(|e| msbvm_sdk::Error::Spawn(e.to_string()))??);
                break;
            }
        }
        let Some(out) = out else {
            return Ok("no-reply".into());
        };
        Ok(format!(
            "{},{}",
            out.exit_code(),
            out.stdout_str().matches("rs.reply").count()
        ))
    })
    .await;

    step("errors", async {
        let in_use = match Sandbox::builder("rs-conf").create().await {
            Ok(_) => return Ok("created-twice".into()),
            Err(msbvm_sdk::Error::NameInUse { name }) => name,
            Err(e) => return Err(e),
        };
        match Sandbox::get("rs-none").await {
            Ok(_) => Ok("found".into()),
            Err(msbvm_sdk::Error::NotFound { .. }) => Ok(format!("{in_use},notfound")),
            Err(e) => Err(e),
        }
    })
    .await;

    let attached = Sandbox::get("rs-conf").await?;
    let r = attached.exec("echo", ["attached"]).await?;
    check("get", r.stdout_str().trim());
    drop(attached);
    sb.remove().await?;
    let listed = Sandbox::list()?;
    check("removed", py(listed.iter().all(|i| i.name != "rs-conf")));
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match scenario().await {
        Ok(()) => {
            check("scenario", "done");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rs: {e}");
            check("scenario", "crashed");
            std::process::ExitCode::FAILURE
        }
    }
}
