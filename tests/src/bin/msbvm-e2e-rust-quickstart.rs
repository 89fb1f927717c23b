//! The README's Rust quick-start program, verbatim below this comment (tests/tests/sdk_nested.rs
//! checks the two agree and runs this binary in L1).

use msbvm_sdk::{ExecEvent, ExecOptions, Sandbox};

#[tokio::main]
async fn main() -> msbvm_sdk::Result<()> {
    let sb = Sandbox::builder("rs-demo")
        .memory_mib(256)
        .env("GREETING", "hello")
        .create()
        .await?;
    let out = sb
        .exec("sh", ["-c", "echo $GREETING from $(uname -n)"])
        .await?;
    println!("{} {}", out.stdout_str().trim(), out.exit_code());
    let script = "for i in 1 2 3; do echo $i; sleep 1; done";
    let mut stream = sb
        .exec_stream(ExecOptions::new(["sh", "-c", script]))
        .await?;
    while let Some(event) = stream.next_event().await? {
        match event {
            ExecEvent::Stdout(data) => print!("{}", String::from_utf8_lossy(&data)),
            ExecEvent::Exited(status) => println!("exited {status:?}"),
            _ => {}
        }
    }
    sb.write_file("/tmp/hello.txt", "hi").await?;
    println!(
        "{}",
        String::from_utf8_lossy(&sb.read_file("/tmp/hello.txt").await?)
    );
    sb.remove().await
}
