//! The nested harness itself: L1 boots, loads kvm-amd, offers /dev/kvm, receives added files
//! and reports the exit status of its command. Needs no project artifacts, so it tells harness
//! problems apart from product problems. One L1 run, as each costs seconds of emulation.

use std::time::Duration;

use msbvm_tests::{or_skip, NestedVm, Stream};

/// L1 has SVM in its CPU flags and a /dev/kvm; added files arrive with contents and modes; the
/// command's output and exit status come back.
#[test]
fn l1_has_kvm() {
    let dir = std::env::temp_dir().join(format!("msbvm-harness-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/data.txt"), "tree-file-ok\n").unwrap();
    let script = "grep -m1 -o -w svm /proc/cpuinfo\n\
                  ls -l /dev/kvm\n\
                  cat /opt/tree/sub/data.txt\n\
                  /opt/run.sh 'a b'\n\
                  exit 7\n";
    let result = NestedVm::builder()
        .timeout(Duration::from_secs(600))
        .stream(Stream::Stderr)
        .add_file(&dir, "/opt/tree")
        .add_bytes("/opt/run.sh", "#!/bin/sh\necho script-ok \"$1\"\n", 0o755)
        .run_script(script);
    std::fs::remove_dir_all(&dir).unwrap();
    let Some(out) = or_skip(result) else {
        return;
    };
    let console = &out.console;
    assert_eq!(out.exit_code, 7, "console:\n{console}");
    assert!(
        console.lines().any(|l| l.trim() == "svm"),
        "no svm flag in L1:\n{console}"
    );
    assert!(
        console
            .lines()
            .any(|l| l.starts_with("crw") && l.ends_with("/dev/kvm")),
        "no /dev/kvm in L1:\n{console}"
    );
    assert!(
        !console.contains("insmod"),
        "a module failed to load:\n{console}"
    );
    assert!(console.contains("tree-file-ok"), "console:\n{console}");
    assert!(console.contains("script-ok a b"), "console:\n{console}");
    eprintln!("L1 run took {:.1} s", out.elapsed.as_secs_f64());
}
