//! Command-line parsing.

use super::*;
use std::time::Duration;

fn parse(args: &[&str]) -> Result<Command, clap::Error> {
    Cli::try_parse_from(std::iter::once("msbvm").chain(args.iter().copied()))
        .and_then(check)
        .map(|c| c.command)
}

#[test]
fn run_takes_options_then_the_command_after_dashes() {
    let Command::Run(r) = parse(&[
        "run",
        "--name",
        "box",
        "-d",
        "--cpus",
        "2",
        "--memory",
        "300",
        "-e",
        "A=1",
        "-e",
        "B=x=y",
        "-w",
        "/tmp",
        "-t",
        "--timeout",
        "2.5",
        "--",
        "sh",
        "-c",
        "echo -n hi",
    ])
    .unwrap() else {
        panic!("not run")
    };
    assert_eq!(r.name.as_deref(), Some("box"));
    assert!(r.detach);
    assert_eq!((r.cpus, r.memory), (2, 300));
    assert_eq!(
        r.process.env,
        [("A".into(), "1".into()), ("B".into(), "x=y".into())]
    );
    assert_eq!(r.process.workdir.as_deref(), Some("/tmp"));
    assert!(r.process.tty);
    assert_eq!(r.process.timeout, Some(Duration::from_millis(2500)));
    assert_eq!(r.process.command, ["sh", "-c", "echo -n hi"]);
}

#[test]
fn run_defaults_and_command_without_dashes() {
    let Command::Run(r) = parse(&["run", "uname", "-a"]).unwrap() else {
        panic!()
    };
    assert_eq!(r.name, None);
    assert!(!r.detach && !r.process.tty);
    assert_eq!(r.cpus, msbvm_sdk::DEFAULT_CPUS);
    assert_eq!(r.memory, msbvm_sdk::DEFAULT_MEMORY_MIB);
    assert_eq!(r.process.command, ["uname", "-a"]);
    // Options after the command belong to the command.
    let Command::Run(r) = parse(&["run", "--", "ls", "-t"]).unwrap() else {
        panic!()
    };
    assert!(!r.process.tty);
    assert_eq!(r.process.command, ["ls", "-t"]);
}

#[test]
fn exec_takes_a_name_then_the_command() {
    let Command::Exec(e) = parse(&["exec", "box", "-t", "-e", "K=V", "--", "top"]).unwrap() else {
        panic!()
    };
    assert_eq!(e.name, "box");
    assert!(e.process.tty);
    assert_eq!(e.process.env, [("K".into(), "V".into())]);
    assert_eq!(e.process.command, ["top"]);
    assert!(parse(&["exec"]).is_err());
}

#[test]
fn management_commands() {
    assert!(matches!(parse(&["ls", "--json"]).unwrap(), Command::Ls(l) if l.json));
    assert!(matches!(parse(&["ls"]).unwrap(), Command::Ls(l) if !l.json));
    let Command::Stop(s) = parse(&["stop", "a", "b", "--timeout", "1"]).unwrap() else {
        panic!()
    };
    assert_eq!(s.names, ["a", "b"]);
    assert_eq!(s.timeout, Duration::from_secs(1));
    assert!(parse(&["stop"]).is_err());
    assert!(matches!(parse(&["rm", "a"]).unwrap(), Command::Rm(r) if r.names == ["a"]));
    assert!(matches!(parse(&["logs", "a"]).unwrap(), Command::Logs(l) if l.name == "a"));
}

#[test]
fn bad_values_are_refused() {
    assert!(parse(&["run", "-e", "novalue", "--", "x"]).is_err());
    assert!(parse(&["run", "--cpus", "x"]).is_err());
    assert!(parse(&["run", "--timeout", "-1", "--", "x"]).is_err());
    // A mistyped option is an error, not a command to run.
    assert!(parse(&["run", "--nmae", "x", "--", "ls"]).is_err());
}

#[test]
fn hidden_runtime_takes_everything_verbatim() {
    let Command::Runtime { args } =
        parse(&["__runtime", "--name", "a", "--help", "--env", "X=--y"]).unwrap()
    else {
        panic!()
    };
    assert_eq!(args, ["--name", "a", "--help", "--env", "X=--y"]);
}

#[test]
fn existing_commands_still_parse() {
    assert!(matches!(
        parse(&["boot", "--cpus", "2", "--memory", "128"]).unwrap(),
        Command::Boot(_)
    ));
    assert!(matches!(
        parse(&["kernel", "path"]).unwrap(),
        Command::Kernel(_)
    ));
}

#[test]
fn kernel_arch_takes_gnu_and_kernel_names_and_defaults_to_none() {
    use msbvm_kernel::Arch;
    let arch_of = |args: &[&str]| match parse(args).unwrap() {
        Command::Kernel(kernel::KernelCommand::Build { arch, .. }) => arch,
        Command::Kernel(kernel::KernelCommand::Path { arch }) => arch,
        _ => panic!("not a kernel command"),
    };
    assert_eq!(arch_of(&["kernel", "build"]), None);
    assert_eq!(arch_of(&["kernel", "path"]), None);
    assert_eq!(
        arch_of(&["kernel", "build", "--arch", "arm64"]),
        Some(Arch::Aarch64)
    );
    assert_eq!(
        arch_of(&["kernel", "build", "-q", "--arch", "aarch64"]),
        Some(Arch::Aarch64)
    );
    assert_eq!(
        arch_of(&["kernel", "path", "--arch", "x86_64"]),
        Some(Arch::X86_64)
    );
    assert_eq!(
        arch_of(&["kernel", "path", "--arch=amd64"]),
        Some(Arch::X86_64)
    );
    let err = parse(&["kernel", "build", "--arch", "riscv64"])
        .err()
        .expect("an unknown architecture must not parse");
    assert!(err.to_string().contains("riscv64"), "{err}");
}
