//! Sandbox handles over state directories with stand-ins for the runtime (a lock held by
//! the test, a control server with a fake supervisor) and the agent.

use super::*;
use crate::control::ControlResponse;
use crate::test_support::FakeAgent;
use msbvm_protocol::{ExitStatus, GuestMessage as G};
use tempfile::TempDir;

use crate::test_support::state_record as record;

/// A sandbox that looks live: the test holds its lock, like a runtime would.
fn live(home: &Path, name: &str, status: Status, detached: bool) -> (SandboxDir, state::Claim) {
    let dir = SandboxDir::in_home(home, name).unwrap();
    let claim = state::claim(&dir).unwrap();
    record(name, status, detached).write(&dir).unwrap();
    (dir, claim)
}

/// A sandbox whose runtime is gone.
fn dead(home: &Path, name: &str, status: Status, detached: bool) -> SandboxDir {
    let (dir, claim) = live(home, name, status, detached);
    drop(claim);
    dir
}

#[tokio::test]
async fn get_reaches_a_running_sandbox_and_execs_with_its_env() {
    let tmp = TempDir::new().unwrap();
    let (dir, _claim) = live(tmp.path(), "box", Status::Running, false);
    let fake = FakeAgent::spawn(&dir.vsock_socket(), 1, |s| {
        s.hello();
        let r = s.expect_exec();
        assert_eq!(r.argv, ["echo", "hi"]);
        assert!(r.env.contains(&("FROM_SANDBOX".into(), "yes".into())));
        s.send(&G::Started { pid: 2 });
        s.send(&G::Stdout(b"hi\n".to_vec()));
        s.send(&G::Exited(ExitStatus::Code(0)));
    });
    let sandbox = Sandbox::get_in(tmp.path(), "box").unwrap();
    assert_eq!(sandbox.name(), "box");
    assert_eq!(sandbox.boot_times().unwrap().ready_ns, 2);
    assert!(sandbox.create_duration().is_none());
    let out = sandbox.exec("echo", ["hi"]).await.unwrap();
    assert_eq!(out.stdout_str(), "hi\n");
    assert!(out.success());
    fake.join();
}

#[test]
fn get_explains_what_is_wrong() {
    let tmp = TempDir::new().unwrap();
    let e = Sandbox::get_in(tmp.path(), "nobox").unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    dead(tmp.path(), "gone", Status::Running, true);
    let e = Sandbox::get_in(tmp.path(), "gone").unwrap_err();
    assert!(e.to_string().contains("crashed"), "{e}");
    dead(tmp.path(), "done", Status::Stopped, true);
    let e = Sandbox::get_in(tmp.path(), "done").unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");
    let (_dir, _claim) = live(tmp.path(), "boot", Status::Starting, false);
    let e = Sandbox::get_in(tmp.path(), "boot").unwrap_err();
    assert!(e.to_string().contains("starting"), "{e}");
    let e = Sandbox::get_in(tmp.path(), "Bad").unwrap_err();
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
}

#[test]
fn list_shows_live_and_detached_and_drops_dead_attached_debris() {
    let tmp = TempDir::new().unwrap();
    assert!(Sandbox::list_in(tmp.path()).unwrap().is_empty());
    let (_d, _claim) = live(tmp.path(), "a-live", Status::Running, false);
    let debris = dead(tmp.path(), "b-debris", Status::Running, false);
    dead(tmp.path(), "c-crashed", Status::Running, true);
    dead(tmp.path(), "d-stopped", Status::Stopped, true);
    std::fs::create_dir_all(sandboxes_dir(tmp.path()).join("not a name")).unwrap();
    let list = Sandbox::list_in(tmp.path()).unwrap();
    let got: Vec<(&str, Status)> = list.iter().map(|i| (i.name.as_str(), i.status)).collect();
    assert_eq!(
        got,
        [
            ("a-live", Status::Running),
            ("c-crashed", Status::Crashed),
            ("d-stopped", Status::Stopped)
        ]
    );
    assert!(!debris.path().exists());
    assert_eq!(list[0].cpus, 2);
    let json = serde_json::to_string(&list[0]).unwrap();
    assert!(json.contains(r#""status":"running""#), "{json}");
}

/// A control server whose supervisor releases the lock when asked to stop or kill, as the
/// runtime does when it exits.
fn fake_runtime(dir: &SandboxDir, claim: state::Claim) -> std::thread::JoinHandle<Vec<String>> {
    let listener = std::os::unix::net::UnixListener::bind(dir.control_socket()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    crate::control::server::spawn(listener, || {}, crate::test_support::forward_to(tx)).unwrap();
    std::thread::spawn(move || {
        let Ok((request, reply)) = rx.recv() else {
            return Vec::new();
        };
        drop(claim);
        let _ = reply.send(ControlResponse::Stopped {
            exit: "the guest powered off".into(),
        });
        vec![format!("{request:?}")]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_asks_the_runtime_and_waits_for_it_to_exit() {
    let tmp = TempDir::new().unwrap();
    let (dir, claim) = live(tmp.path(), "box", Status::Running, true);
    let runtime = fake_runtime(&dir, claim);
    let sandbox = Sandbox::get_in(tmp.path(), "box").unwrap();
    sandbox
        .stop_with_timeout(Duration::from_millis(1200))
        .await
        .unwrap();
    assert!(!state::is_live(&dir));
    assert_eq!(
        runtime.join().unwrap(),
        ["Stop { timeout_ms: 1200 }".to_string()]
    );
    // Stopping a stopped sandbox is fine.
    sandbox.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_stops_then_deletes() {
    let tmp = TempDir::new().unwrap();
    let (dir, claim) = live(tmp.path(), "box", Status::Running, true);
    let runtime = fake_runtime(&dir, claim);
    Sandbox::remove_in(tmp.path(), "box").await.unwrap();
    assert!(!dir.path().exists());
    runtime.join().unwrap();
    let e = Sandbox::remove_in(tmp.path(), "box").await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
}

#[tokio::test]
async fn kill_without_a_control_socket_kills_the_runtime_process() {
    let tmp = TempDir::new().unwrap();
    let dir = dead(tmp.path(), "box", Status::Running, true);
    // A stand-in runtime process holding the lock: flock(1) without forking.
    let child = std::process::Command::new("flock")
        .arg("-F")
        .arg(dir.lock_file())
        .args(["sleep", "30"])
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("skipped: flock(1) (util-linux) is not installed");
        return;
    };
    for _ in 0..200 {
        if state::is_live(&dir) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(state::is_live(&dir));
    kill_dir(&dir, Some(child.id())).await.unwrap();
    assert!(!state::is_live(&dir));
    let _ = child.wait();
    let record = StateRecord::read(&dir).unwrap().unwrap();
    assert_eq!(record.status, Status::Stopped);
    assert!(record.exit.unwrap().contains("killed"));
}

#[tokio::test]
async fn builder_rejects_bad_requests_before_starting_anything() {
    let e = Sandbox::builder("box").cpus(0).create().await.unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
    let e = Sandbox::builder("box")
        .memory_mib(1)
        .create()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("MiB, not 1"), "{e}");
    let e = Sandbox::builder("box").mtu(100).create().await.unwrap_err();
    assert!(e.to_string().contains("576"), "{e}");
    let e = Sandbox::builder("box")
        .env("A=B", "c")
        .create()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("A=B"), "{e}");
    let e = Sandbox::builder("-x").create().await.unwrap_err();
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
}

#[test]
fn binding_numbers_are_checked_against_the_vmm_limits() {
    assert_eq!(checked_cpus(1).unwrap(), 1);
    assert_eq!(checked_cpus(i64::from(MAX_CPUS)).unwrap(), MAX_CPUS);
    for bad in [0, -1, 255, 300, i64::MAX, i64::MIN] {
        let e = checked_cpus(bad).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
        assert!(e.to_string().contains(&bad.to_string()), "{e}");
    }
    assert_eq!(checked_memory_mib(256).unwrap(), 256);
    assert_eq!(
        checked_memory_mib(MIN_MEMORY_MIB as i64).unwrap(),
        MIN_MEMORY_MIB
    );
    for bad in [0, 15, -256, MAX_MEMORY_MIB as i64 + 1, i64::MIN] {
        let e = checked_memory_mib(bad).unwrap_err();
        assert!(e.to_string().contains("MiB"), "{e}");
    }
}
