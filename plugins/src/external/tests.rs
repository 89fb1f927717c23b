//! Out-of-process plugins as real processes: Python programs on the reference client
//! (`python/msbvm_plugin.py`), and shell scripts for the ones that break the protocol.

use super::*;
use std::path::Path;
use std::sync::Mutex;

/// `python3`, or `None` with a line saying the test cannot run.
fn python(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("python3"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!("{test}: skipped: no python3 on PATH");
    }
    found
}

/// A Python plugin: `body` after the helper is imported as `msbvm_plugin` and `plugin` made.
fn py_plugin(dir: &tempfile::TempDir, python: &Path, body: &str) -> ExternalSpec {
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let script = dir.path().join("plugin.py");
    std::fs::write(
        &script,
        format!(
            "import sys, os, time\nsys.path.insert(0, {helper:?})\n\
             from msbvm_plugin import Plugin, deny, change\n\
             plugin = Plugin('py')\n{body}\nplugin.run()\n",
            helper = helper.display().to_string(),
        ),
    )
    .unwrap();
    let mut spec = ExternalSpec::new(python);
    spec.args = vec![script.display().to_string()];
    spec.timeout = Duration::from_secs(5);
    spec
}

/// A shell plugin running `body`.
fn sh_plugin(dir: &tempfile::TempDir, body: &str) -> ExternalSpec {
    let script = dir.path().join("plugin.sh");
    std::fs::write(&script, body).unwrap();
    let mut spec = ExternalSpec::new("/bin/sh");
    spec.args = vec![script.display().to_string()];
    spec
}

type Notices = Arc<Mutex<Vec<Notice>>>;

fn sink() -> (NoticeSink, Notices) {
    let got: Notices = Arc::new(Mutex::new(Vec::new()));
    let into = got.clone();
    (Arc::new(move |n| into.lock().unwrap().push(n)), got)
}

/// Waits (up to 20 s, a hang guard) until `pred` holds for the notices.
fn wait_for(got: &Notices, what: &str, pred: impl Fn(&[Notice]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pred(&got.lock().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "no {what}: {:?}",
            got.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exec(argv: &[&str]) -> Exec {
    Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Exec::default()
    }
}

const GUARD: &str = r#"
@plugin.on("exec.before")
def before(e):
    if e["argv"][:3] == ["rm", "-rf", "/"]:
        return deny("rm -rf / is not for " + plugin.sandbox + " (" + str(plugin.config) + ")")
    e["env"].append(["GUARDED", "1"])
    return change(e)

@plugin.on("exec.after")
def after(e):
    with open(OUT, "a") as f:
        f.write(e["argv"][0] + " " + str(e["code"]) + "\n")
"#;

#[test]
fn a_python_plugin_denies_rewrites_and_observes() {
    let Some(py) = python("a_python_plugin_denies_rewrites_and_observes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("after.txt");
    let body = format!("OUT = {:?}\n{GUARD}", out.display().to_string());
    let mut spec = py_plugin(&dir, &py, &body);
    spec.config = Some("strict".into());
    let (notices, got) = sink();
    let plugin = External::start(spec, "sb1", notices).unwrap();
    assert_eq!(plugin.name(), "py");
    let i = plugin.interests();
    assert!(i.contains(Hook::ExecBefore) && i.contains(Hook::ExecAfter));
    assert!(!i.contains(Hook::Flow) && !i.contains(Hook::Fs));

    let mut bad = exec(&["rm", "-rf", "/"]);
    assert_eq!(
        plugin.before_exec(&mut bad),
        Decision::deny("rm -rf / is not for sb1 (strict)")
    );
    let mut good = exec(&["ls", "-l"]);
    assert_eq!(plugin.before_exec(&mut good), Decision::Continue);
    assert_eq!(good.argv, ["ls", "-l"]);
    assert_eq!(good.env, [("GUARDED".to_string(), "1".to_string())]);

    plugin.exec_ended(&ExecEnded {
        exec_id: 1,
        argv: good.argv.clone(),
        code: Some(0),
        signal: None,
        timed_out: false,
        duration_ms: 3,
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&out).unwrap_or_default() != "ls 0\n" {
        assert!(Instant::now() < deadline, "the notification never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = plugin.pid().unwrap();
    plugin.shutdown();
    assert!(plugin.pid().is_none());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "the plugin process still runs after shutdown"
    );
    assert!(got.lock().unwrap().is_empty(), "{:?}", got.lock().unwrap());
}

#[test]
fn a_decision_past_its_timeout_follows_the_failure_policy_with_a_notice() {
    let Some(py) = python("a_decision_past_its_timeout_follows_the_failure_policy") else {
        return;
    };
    let body = r#"
@plugin.on("exec.before")
def before(e):
    if e["argv"][0] == "slow":
        time.sleep(1)
    return None
"#;
    for (policy, expect_deny) in [(FailurePolicy::Closed, true), (FailurePolicy::Open, false)] {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = py_plugin(&dir, &py, body);
        spec.timeout = Duration::from_millis(300);
        spec.failure_policy = policy;
        let (notices, got) = sink();
        let plugin = External::start(spec, "sb", notices).unwrap();
        let d = plugin.before_exec(&mut exec(&["slow"]));
        assert_eq!(d.is_deny(), expect_deny, "{policy:?}: {d:?}");
        if let Decision::Deny { reason } = &d {
            assert!(reason.contains("did not answer in time"), "{reason}");
        }
        assert!(
            matches!(&got.lock().unwrap()[..], [Notice::TimedOut { plugin, hook, decided }]
            if plugin == "py" && hook == "exec.before"
                && decided == if expect_deny { "deny" } else { "continue" })
        );
        // The plugin answers one request at a time: once it is past the slow one, the late
        // answer is ignored and the next decision gets its own.
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(plugin.before_exec(&mut exec(&["fast"])), Decision::Continue);
    }
}

#[test]
fn a_crashed_plugin_is_reported_and_restarted() {
    let Some(py) = python("a_crashed_plugin_is_reported_and_restarted") else {
        return;
    };
    let body = r#"
@plugin.on("exec.before")
def before(e):
    if e["argv"][0] == "crash":
        os._exit(3)
    return deny("still here")
"#;
    let dir = tempfile::tempdir().unwrap();
    let (notices, got) = sink();
    let plugin = External::start(py_plugin(&dir, &py, body), "sb", notices).unwrap();
    let first = plugin.pid().unwrap();
    let d = plugin.before_exec(&mut exec(&["crash"]));
    assert!(
        matches!(&d, Decision::Deny { reason } if reason.contains("ended before answering")),
        "a crash during a decision fails closed: {d:?}"
    );
    wait_for(&got, "restart", |n| {
        n.iter()
            .any(|n| matches!(n, Notice::Restarted { restarts: 1, .. }))
    });
    assert!(got.lock().unwrap().iter().any(|n| matches!(n,
        Notice::Failed { reason, .. } if reason.contains("exited"))));
    assert_ne!(plugin.pid(), Some(first));
    assert_eq!(
        plugin.before_exec(&mut exec(&["ls"])),
        Decision::deny("still here"),
        "the restarted plugin decides again"
    );
}

#[test]
fn a_plugin_that_keeps_failing_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    // Answers the hello, then exits: every start fails at once.
    let spec = sh_plugin(
        &dir,
        r#"read hello; echo '{"type":"hello","protocol":1,"name":"flaky","hooks":["net.flow"]}'; exit 1"#,
    );
    let (notices, got) = sink();
    let plugin = External::start(spec, "sb", notices).unwrap();
    wait_for(&got, "give-up", |n| {
        n.iter().any(|n| matches!(n, Notice::GaveUp { .. }))
    });
    let failed = got
        .lock()
        .unwrap()
        .iter()
        .filter(|n| matches!(n, Notice::Failed { .. }))
        .count();
    assert_eq!(failed, MAX_FAILURES - 1, "{:?}", got.lock().unwrap());
    let flow = Flow {
        transport: crate::data::Transport::Tcp,
        dst: "1.2.3.4:443".parse().unwrap(),
        host: None,
    };
    assert!(
        plugin.flow(&flow).is_deny(),
        "a given-up plugin fails closed"
    );
}

#[test]
fn bad_handshakes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"read h; echo '{"type":"hello","protocol":2,"hooks":[]}'"#,
            "protocol 2",
        ),
        (
            r#"read h; echo '{"type":"hello","protocol":1,"hooks":["exec.all"]}'"#,
            "unknown hook",
        ),
        (r#"read h; echo 'hello there'"#, "not a protocol line"),
        (r#"read h; exit 0"#, "before its hello"),
        (
            r#"read h; printf '{"type":"hel'; sleep 5"#,
            "no hello within",
        ),
    ];
    for (body, expect) in cases {
        let mut spec = sh_plugin(&dir, body);
        spec.handshake_timeout = Duration::from_millis(500);
        let (notices, _) = sink();
        let err = External::start(spec, "sb", notices)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(expect), "{body}: {err}");
    }
    let (notices, _) = sink();
    let err = External::start(ExternalSpec::new("/nonexistent/plugin"), "sb", notices)
        .err()
        .unwrap();
    assert!(matches!(err, StartError::Spawn { .. }), "{err}");
}

#[test]
fn a_plugin_that_stops_reading_never_blocks_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    // Handshakes, then never reads again.
    let spec = sh_plugin(
        &dir,
        r#"read h; echo '{"type":"hello","protocol":1,"hooks":["exec.output","net.flow"]}'; sleep 30"#,
    );
    let (notices, got) = sink();
    let mut spec = spec;
    spec.timeout = Duration::from_millis(200);
    spec.failure_policy = FailurePolicy::Open;
    let plugin = External::start(spec, "sb", notices).unwrap();
    let big = "x".repeat(64 * 1024);
    for i in 0..(QUEUE as u64 + 2000) {
        plugin.exec_output(&ExecOutput {
            exec_id: i,
            stream: crate::data::OutputStream::Stdout,
            text: big.clone(),
        });
    }
    assert!(got
        .lock()
        .unwrap()
        .iter()
        .any(|n| matches!(n, Notice::Dropped { .. })));
    let flow = Flow {
        transport: crate::data::Transport::Udp,
        dst: "9.9.9.9:53".parse().unwrap(),
        host: None,
    };
    assert_eq!(
        plugin.flow(&flow),
        Decision::Continue,
        "fails open when busy"
    );
    plugin.shutdown();
}

#[test]
fn a_line_over_the_limit_breaks_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sh_plugin(
        &dir,
        r#"read h; echo '{"type":"hello","protocol":1,"hooks":["net.dns"]}'; read q; head -c 3000000 /dev/zero | tr '\0' 'a'; echo; sleep 30"#,
    );
    let (notices, got) = sink();
    let plugin = External::start(spec, "sb", notices).unwrap();
    let d = plugin.dns_query(&DnsQuery {
        name: "example.com".into(),
        qtype: "A".into(),
    });
    assert!(d.is_deny(), "{d:?}");
    wait_for(&got, "failure", |n| {
        n.iter()
            .any(|n| matches!(n, Notice::Failed { reason, .. } if reason.contains("longer than")))
    });
    plugin.shutdown();
}

#[test]
fn an_unusable_change_follows_the_failure_policy() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sh_plugin(
        &dir,
        r#"read h; echo '{"type":"hello","protocol":1,"hooks":["exec.before"]}'
while read q; do
  id=$(echo "$q" | sed 's/.*"id":\([0-9]*\).*/\1/')
  echo "{\"type\":\"decision\",\"id\":$id,\"verdict\":\"continue\",\"data\":{\"argv\":[]}}"
done"#,
    );
    let (notices, got) = sink();
    let plugin = External::start(spec, "sb", notices).unwrap();
    let mut e = exec(&["ls"]);
    assert!(plugin.before_exec(&mut e).is_deny());
    assert_eq!(e.argv, ["ls"], "the exec is left as it was");
    assert!(
        matches!(&got.lock().unwrap()[..], [Notice::Failed { reason, .. }] if reason.contains("argv"))
    );
}

#[test]
fn a_change_replaces_only_the_fields_it_names() {
    let e = Exec {
        argv: vec!["ls".into()],
        env: vec![("A".into(), "1".into())],
        cwd: Some("/tmp".into()),
        ..Exec::default()
    };
    let changed: Exec = merged(&e, serde_json::json!({"argv": ["ls", "-a"]})).unwrap();
    assert_eq!(changed.argv, ["ls", "-a"]);
    assert_eq!((changed.env, changed.cwd), (e.env.clone(), e.cwd.clone()));
    assert!(merged(&e, serde_json::json!({"shell": true}))
        .unwrap_err()
        .contains("shell"));
    assert!(merged(&e, serde_json::json!(["ls"])).is_err());
    assert!(merged(&e, serde_json::json!({"uid": "root"})).is_err());
}

#[test]
fn a_python_plugin_answers_reads_and_rewrites_writes_in_base64() {
    let Some(py) = python("a_python_plugin_answers_reads_and_rewrites_writes_in_base64") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let body = r#"
import base64

@plugin.on("fs.read")
def read(r):
    if r["path"] == "/etc/motd":
        r["data"] = base64.b64encode(b"hello from the plugin").decode()
        return change(r)
    if r["path"] == "/etc/shadow":
        return deny("not this one")
    return None

@plugin.on("fs.write")
def write(w):
    data = base64.b64decode(w["data"]).replace(b"\x00", b"")
    w["data"] = base64.b64encode(data.upper()).decode()
    return change(w)
"#;
    let (notices, _) = sink();
    let plugin = External::start(py_plugin(&dir, &py, body), "sb1", notices).unwrap();
    let io = |path: &str, data: Option<&[u8]>| FsIo {
        path: Some(path.into()),
        offset: 0,
        size: 4096,
        data: data.map(<[u8]>::to_vec),
    };
    let mut motd = io("/etc/motd", None);
    assert_eq!(plugin.fs_read(&mut motd), Decision::Continue);
    assert_eq!(motd.data.as_deref(), Some(&b"hello from the plugin"[..]));
    let mut other = io("/etc/hosts", None);
    assert_eq!(plugin.fs_read(&mut other), Decision::Continue);
    assert_eq!(other.data, None, "not answered: the file is read");
    assert!(plugin.fs_read(&mut io("/etc/shadow", None)).is_deny());
    // Binary data travels intact both ways.
    let mut write = io("/tmp/x", Some(b"ab\x00c\xff"));
    assert_eq!(plugin.fs_write(&mut write), Decision::Continue);
    assert_eq!(write.data.as_deref(), Some(&b"ABC\xff"[..]));
    plugin.shutdown();
}
