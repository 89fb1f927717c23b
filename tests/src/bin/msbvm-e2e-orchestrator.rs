//! A Rust program for inside a sandbox (the spawn suite runs it in a guest): through the SDK's
//! [`msbvm_sdk::peer`] it creates a child, runs a command in it, writes and reads back a file,
//! lists the children and removes the child, printing one line of results (or the error,
//! exit 1). `msbvm-e2e-orchestrator CHILD`.

use msbvm_sdk::peer::{ChildSpec, Peers};

async fn orchestrate(child: &str) -> msbvm_sdk::Result<String> {
    let peers = Peers::connect().await?;
    peers
        .create(ChildSpec {
            name: child.into(),
            memory_mib: Some(128),
            ..ChildSpec::default()
        })
        .await?;
    let out = peers
        .exec(child, &["sh", "-c", "echo from-rust-$((6*7))"], b"")
        .await?;
    peers.write_file(child, "/rust.txt", b"rust-data").await?;
    let back = peers.read_file(child, "/rust.txt").await?;
    let listed = peers.list().await?;
    let seen = listed
        .iter()
        .any(|c| c.name == child && c.status == "running");
    peers.remove(child).await?;
    let after = peers.list().await?;
    Ok(format!(
        "{} code={} file={} listed={seen} removed={}",
        String::from_utf8_lossy(&out.stdout).trim(),
        out.code,
        String::from_utf8_lossy(&back),
        !after.iter().any(|c| c.name == child)
    ))
}

fn main() -> std::process::ExitCode {
    let child = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "rust-child".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(orchestrate(&child)) {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("orchestrator error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
