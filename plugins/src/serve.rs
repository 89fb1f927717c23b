//! A [`Chain`] served as one out-of-process plugin: what `msbvm __plugins` runs.
//!
//! A sandbox's runtime confines itself (no new programs, another user, a narrow filesystem
//! view), yet plugins configured with `--plugin` are the user's programs and must run as the
//! user, and be started again when they crash. So the runtime starts this host before it
//! confines itself; the host starts the configured plugins (shipped ones in its own process,
//! executables as its children), composes them in the order given, and speaks the same
//! protocol (`PROTOCOL.md`) to the runtime, which sees it as a single plugin. What happens to
//! the plugins ([`Notice`]s) and what they emit reach the runtime as `event` lines; notices
//! have the topic [`NOTICE_TOPIC`].

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::builtin::{self, Context};
use crate::data::{
    DnsAnswer, DnsQuery, Event, Exec, ExecEnded, ExecOutput, Flow, FlowBytes, FsAccess, FsIo,
    HttpRequest, Lifecycle, SandboxInfo,
};
use crate::external::protocol::{self, ToPlugin};
use crate::external::{External, ExternalSpec};
use crate::hook::Hook;
use crate::plugin::{Decision, Notice, NoticeSink, Plugin};
use crate::spec::{PluginSpec, Source};
use crate::Chain;

/// The topic of the `event` lines that carry a [`Notice`].
pub const NOTICE_TOPIC: &str = "msbvm.plugin";

/// Decisions handled at once on threads of their own (more wait their turn inline).
const PARALLEL_DECISIONS: usize = 64;

/// Starts the plugins of `specs` for sandbox `cx`, in order; `notices` hears of them.
pub fn build_chain(
    specs: &[PluginSpec],
    cx: &Context,
    notices: NoticeSink,
) -> Result<Chain, String> {
    let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
    for spec in specs {
        spec.check()?;
        let plugin: Arc<dyn Plugin> = match &spec.source {
            Source::Builtin(name) => builtin::start(name, spec.config.as_deref(), cx)?,
            Source::Program(path) => {
                let mut external = ExternalSpec::new(path);
                external.config = spec.config.clone();
                external.timeout = spec.timeout();
                external.failure_policy = spec.failure_policy();
                Arc::new(
                    External::start(external, &cx.sandbox, notices.clone())
                        .map_err(|e| e.to_string())?,
                )
            }
        };
        plugins.push(plugin);
    }
    Ok(Chain::new(plugins, notices))
}

/// The longest the chain of `specs` may take over one decision: each plugin's timeout in
/// turn, plus a margin for the hops.
pub fn chain_timeout(specs: &[PluginSpec]) -> Duration {
    specs.iter().map(PluginSpec::timeout).sum::<Duration>() + Duration::from_secs(2)
}

/// Serves `chain` on `input`/`output` until `shutdown` or end of input. `output` is shared
/// with the chain's notice sink ([`notice_sink`]).
pub fn serve<W: Write + Send + 'static>(
    chain: Arc<Chain>,
    input: impl BufRead,
    output: Arc<Mutex<W>>,
) -> Result<(), String> {
    let busy = Arc::new(AtomicUsize::new(0));
    let lines = input.split(b'\n');
    let mut greeted = false;
    for line in lines {
        let line = line.map_err(|e| format!("reading from the sandbox: {e}"))?;
        if line.len() >= protocol::MAX_LINE {
            return Err(protocol::ProtocolError::TooLong.to_string());
        }
        let message: ToPlugin = serde_json::from_slice(&line)
            .map_err(|e| format!("a bad line from the sandbox: {e}"))?;
        match message {
            ToPlugin::Hello { protocol: v, .. } => {
                if v != protocol::PROTOCOL_VERSION {
                    return Err(format!("the sandbox speaks protocol {v}"));
                }
                greeted = true;
                let hooks: Vec<&str> = chain.interests().iter().map(Hook::name).collect();
                write_line(
                    &output,
                    &json!({"type": "hello", "protocol": protocol::PROTOCOL_VERSION,
                            "name": "plugins", "hooks": hooks, "limits": chain.limits()}),
                );
            }
            _ if !greeted => return Err("the sandbox did not say hello first".into()),
            ToPlugin::Decide { id, hook, data } => {
                if busy.fetch_add(1, Ordering::AcqRel) < PARALLEL_DECISIONS {
                    let (chain, output, done) = (chain.clone(), output.clone(), busy.clone());
                    let spawned = std::thread::Builder::new()
                        .name("msbvm-plugins-decide".into())
                        .spawn(move || {
                            crate::thread_started();
                            answer(&chain, id, hook, data, &output);
                            done.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        busy.fetch_sub(1, Ordering::AcqRel);
                    }
                } else {
                    answer(&chain, id, hook, data, &output);
                    busy.fetch_sub(1, Ordering::AcqRel);
                }
            }
            ToPlugin::Notify { hook, data } => notify(&chain, hook, data),
            ToPlugin::Shutdown => break,
        }
    }
    chain.shutdown();
    Ok(())
}

/// A notice sink that writes each notice to `output` as an `event` line.
pub fn notice_sink<W: Write + Send + 'static>(output: Arc<Mutex<W>>) -> NoticeSink {
    Arc::new(move |notice: Notice| {
        let line = match notice {
            Notice::Event {
                plugin,
                topic,
                data,
            } => json!({"type": "event", "topic": topic, "data": {"plugin": plugin, "data": data}}),
            other => json!({"type": "event", "topic": NOTICE_TOPIC, "data": other}),
        };
        write_line(&output, &line);
    })
}

fn write_line<W: Write>(output: &Mutex<W>, value: &Value) {
    let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(out, "{value}").and_then(|()| out.flush());
}

/// Runs one decision hook and writes its answer (with the changed value for hooks that take
/// one). Data that does not fit the hook is denied.
fn answer<W: Write>(chain: &Chain, id: u64, hook: Hook, data: Value, output: &Mutex<W>) {
    fn typed<T: serde::de::DeserializeOwned>(data: Value) -> Result<T, Decision> {
        serde_json::from_value(data)
            .map_err(|e| Decision::deny(format!("the sandbox sent unusable hook data: {e}")))
    }
    let (decision, changed) = match hook {
        Hook::ExecBefore => match typed::<Exec>(data) {
            Ok(mut exec) => {
                let d = chain.before_exec(&mut exec);
                (d, Some(json!(exec)))
            }
            Err(d) => (d, None),
        },
        Hook::Http => match typed::<HttpRequest>(data) {
            Ok(mut request) => {
                let d = chain.http_request(&mut request);
                (d, Some(json!(request)))
            }
            Err(d) => (d, None),
        },
        Hook::Fs => (
            typed::<FsAccess>(data).map_or_else(|d| d, |a| chain.fs_access(&a)),
            None,
        ),
        Hook::FsRead | Hook::FsWrite => match typed::<FsIo>(data) {
            Ok(mut io) => {
                let d = match hook {
                    Hook::FsRead => chain.fs_read(&mut io),
                    _ => chain.fs_write(&mut io),
                };
                (d, Some(json!(io)))
            }
            Err(d) => (d, None),
        },
        Hook::Flow => (
            typed::<Flow>(data).map_or_else(|d| d, |f| chain.flow(&f)),
            None,
        ),
        Hook::Dns => (
            typed::<DnsQuery>(data).map_or_else(|d| d, |q| chain.dns_query(&q)),
            None,
        ),
        other => (
            Decision::deny(format!("{other} is not a decision hook")),
            None,
        ),
    };
    let mut line = match &decision {
        Decision::Continue => json!({"type": "decision", "id": id, "verdict": "continue"}),
        Decision::Deny { reason } => {
            json!({"type": "decision", "id": id, "verdict": "deny", "reason": reason})
        }
    };
    if let (Some(changed), false) = (changed, decision.is_deny()) {
        line["data"] = changed;
    }
    write_line(output, &line);
}

fn notify(chain: &Chain, hook: Hook, data: Value) {
    fn typed<T: serde::de::DeserializeOwned>(data: Value) -> Option<T> {
        serde_json::from_value(data).ok()
    }
    match hook {
        Hook::Lifecycle => {
            let sandbox = SandboxInfo {
                name: data
                    .get("sandbox")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            };
            if let Some(step) = typed::<Lifecycle>(data) {
                chain.lifecycle(&sandbox, &step);
            }
        }
        Hook::ExecOutput => {
            if let Some(o) = typed::<ExecOutput>(data) {
                chain.exec_output(&o);
            }
        }
        Hook::ExecAfter => {
            if let Some(e) = typed::<ExecEnded>(data) {
                chain.exec_ended(&e);
            }
        }
        Hook::FsChange => {
            if let Some(c) = typed::<FsAccess>(data) {
                chain.fs_change(&c);
            }
        }
        Hook::DnsAnswer => {
            if let Some(a) = typed::<DnsAnswer>(data) {
                chain.dns_answer(&a);
            }
        }
        Hook::Bytes => {
            if let Some(b) = typed::<FlowBytes>(data) {
                chain.flow_bytes(&b);
            }
        }
        Hook::Event => {
            if let Some(e) = typed::<Event>(data) {
                chain.event(&e);
            }
        }
        _ => {}
    }
}

/// `msbvm __plugins`: builds the chain of `specs` and serves it on stdin/stdout.
pub fn main(sandbox: &str, dir: &Path, specs: &[PluginSpec]) -> Result<(), String> {
    let output = Arc::new(Mutex::new(std::io::stdout()));
    let cx = Context {
        sandbox: sandbox.to_string(),
        dir: dir.to_path_buf(),
    };
    let chain = Arc::new(build_chain(specs, &cx, notice_sink(output.clone()))?);
    serve(chain, std::io::stdin().lock(), output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::external::protocol::FromPlugin;
    use std::io::Cursor;

    /// A shared buffer the serve loop writes to.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buf: &Buf) -> Vec<FromPlugin> {
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| protocol::parse(l.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn a_chain_of_shipped_plugins_is_served_as_one_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let cx = Context {
            sandbox: "sb".into(),
            dir: dir.path().into(),
        };
        let specs = [
            PluginSpec::parse("rate-limit:execs=1", dir.path()).unwrap(),
            PluginSpec::parse("audit", dir.path()).unwrap(),
        ];
        let buf = Buf::default();
        let out = Arc::new(Mutex::new(buf.clone()));
        let chain = Arc::new(build_chain(&specs, &cx, notice_sink(out.clone())).unwrap());
        let exec = json!({"argv": ["ls"], "env": [], "cwd": null, "uid": null, "gid": null});
        let input = [
            line(&ToPlugin::Hello {
                protocol: 1,
                sandbox: "sb".into(),
                config: None,
            }),
            line(&ToPlugin::Decide {
                id: 1,
                hook: Hook::ExecBefore,
                data: exec.clone(),
            }),
        ]
        .concat();
        serve(chain.clone(), Cursor::new(input), out.clone()).unwrap();
        // Decisions run on threads; the second is sent after the first was answered.
        let wait = |n: usize| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while lines(&buf).len() < n {
                assert!(std::time::Instant::now() < deadline, "no answer");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait(2);
        let got = lines(&buf);
        let FromPlugin::Hello { hooks, name, .. } = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(name.as_deref(), Some("plugins"));
        assert!(hooks.contains(&"exec.before".to_string()) && hooks.contains(&"lifecycle".into()));
        assert!(
            matches!(&got[1], FromPlugin::Decision { id: 1, verdict, data: Some(_), .. } if verdict == "continue")
        );
        let again = [
            line(&ToPlugin::Hello {
                protocol: 1,
                sandbox: "sb".into(),
                config: None,
            }),
            line(&ToPlugin::Decide {
                id: 2,
                hook: Hook::ExecBefore,
                data: exec,
            }),
        ]
        .concat();
        serve(chain, Cursor::new(again), out).unwrap();
        wait(4);
        let got = lines(&buf);
        assert!(
            matches!(&got[3], FromPlugin::Decision { id: 2, verdict, reason: Some(r), .. }
                if verdict == "deny" && r.contains("rate limit")),
            "{got:?}"
        );
        let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert_eq!(
            audit.lines().count(),
            1,
            "the denied exec never reached audit"
        );
    }

    #[test]
    fn the_sandbox_must_greet_first() {
        let chain = Arc::new(Chain::empty());
        let out = Arc::new(Mutex::new(Buf::default()));
        let input = line(&ToPlugin::Notify {
            hook: Hook::Lifecycle,
            data: json!({}),
        });
        assert!(serve(chain, Cursor::new(input), out).is_err());
    }

    fn line(m: &ToPlugin) -> Vec<u8> {
        protocol::line(m).into_bytes()
    }
}
