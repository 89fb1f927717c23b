//! `msbvm cp`: copies files and directory trees between the host and a sandbox, like
//! `docker cp`.
//!
//! Exactly one side is `SANDBOX:PATH`. A destination that is an existing directory receives
//! the source under its own name; otherwise the source becomes the destination. `-` as the
//! host side is a tar archive on stdin (unpacked into the sandbox directory) or stdout (of
//! the sandbox path). Symlinks are copied as links.

use std::path::{Path, PathBuf};

use clap::Args;
use msbvm_sdk::{validate_name, AgentLimits, Error, FileErrorKind, FileKind, Sandbox};

/// Arguments of `msbvm cp`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct CpArgs {
    /// What to copy: a host path, SANDBOX:PATH, or `-` for a tar archive on stdin.
    pub src: String,
    /// Where to: a host path, SANDBOX:PATH, or `-` for a tar archive on stdout.
    pub dst: String,
    /// Copying out of a sandbox: the most bytes of file data to write on the host (the
    /// sandbox is not trusted to send a sane amount).
    #[arg(long, value_name = "BYTES", default_value_t = msbvm_sdk::AgentLimits::default().max_copy_bytes)]
    pub max_bytes: u64,
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// A host path.
    Host(PathBuf),
    /// A path in a sandbox.
    Sandbox { name: String, path: String },
    /// A tar archive on stdin or stdout.
    Stdio,
}

impl Location {
    /// `SANDBOX:PATH` when the part before the first `:` is a sandbox name; a path starting
    /// with `/` or `.` is always a host path (write `./a:b` for a host file named `a:b`).
    fn parse(arg: &str) -> Location {
        if arg == "-" {
            return Location::Stdio;
        }
        if !arg.starts_with('/') && !arg.starts_with('.') {
            if let Some((name, path)) = arg.split_once(':') {
                if validate_name(name).is_ok() {
                    let path = if path.is_empty() { "/" } else { path };
                    return Location::Sandbox {
                        name: name.into(),
                        path: path.into(),
                    };
                }
            }
        }
        Location::Host(arg.into())
    }
}

fn usage(message: &str) -> Error {
    Error::InvalidConfig(format!("msbvm cp: {message}"))
}

/// The last component of a guest path (`None` for `/`).
fn guest_name(path: &str) -> Option<&str> {
    let name = path.trim_end_matches('/').rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

/// `dir/name` in the guest.
fn guest_join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Runs `msbvm cp`.
pub async fn cp(args: CpArgs) -> Result<u8, Error> {
    match (Location::parse(&args.src), Location::parse(&args.dst)) {
        (Location::Host(src), Location::Sandbox { name, path }) => {
            let sandbox = Sandbox::get(&name).await?;
            let src_name = src
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| *n != "..")
                .ok_or_else(|| usage(&format!("{}: name a file or directory", src.display())))?;
            let target = match sandbox.stat(&path).await {
                Ok(s) if s.kind == FileKind::Dir => guest_join(&path, src_name),
                Ok(_) => path,
                Err(e) if e.file_error_kind() == Some(FileErrorKind::NotFound) => {
                    if path.ends_with('/') {
                        return Err(e);
                    }
                    path
                }
                Err(e) => return Err(e),
            };
            sandbox.copy_in(&src, &target).await?;
        }
        (Location::Stdio, Location::Sandbox { name, path }) => {
            let sandbox = Sandbox::get(&name).await?;
            sandbox.upload_archive(&path, tokio::io::stdin()).await?;
        }
        (Location::Sandbox { name, path }, Location::Host(dst)) => {
            let limits = AgentLimits {
                max_copy_bytes: args.max_bytes,
                ..AgentLimits::default()
            };
            let sandbox = Sandbox::get(&name).await?.with_agent_limits(limits);
            let target = host_target(&dst, &path)?;
            sandbox.copy_out(&path, &target).await?;
        }
        (Location::Sandbox { name, path }, Location::Stdio) => {
            let sandbox = Sandbox::get(&name).await?;
            sandbox.download_archive(&path, tokio::io::stdout()).await?;
        }
        (Location::Sandbox { .. }, Location::Sandbox { .. }) => {
            return Err(usage(
                "copying between sandboxes is not supported; copy through the host",
            ))
        }
        (Location::Stdio, Location::Stdio) => return Err(usage("only one side can be `-`")),
        _ => {
            return Err(usage(
                "one side must be SANDBOX:PATH (e.g. `msbvm cp ./file box:/tmp/`)",
            ))
        }
    }
    Ok(0)
}

/// Where a copy out of the sandbox lands: inside `dst` when it is a directory.
fn host_target(dst: &Path, guest_path: &str) -> Result<PathBuf, Error> {
    if dst.is_dir() {
        let name = guest_name(guest_path)
            .ok_or_else(|| usage(&format!("{guest_path}: name a file or directory")))?;
        Ok(dst.join(name))
    } else {
        Ok(dst.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_told_apart() {
        let sandbox = |n: &str, p: &str| Location::Sandbox {
            name: n.into(),
            path: p.into(),
        };
        assert_eq!(
            Location::parse("box:/etc/hosts"),
            sandbox("box", "/etc/hosts")
        );
        assert_eq!(Location::parse("box:"), sandbox("box", "/"));
        assert_eq!(Location::parse("-"), Location::Stdio);
        assert_eq!(Location::parse("./a:b"), Location::Host("./a:b".into()));
        assert_eq!(Location::parse("/x:y"), Location::Host("/x:y".into()));
        // Not a sandbox name: a host path.
        assert_eq!(
            Location::parse("Big Box:/x"),
            Location::Host("Big Box:/x".into())
        );
        assert_eq!(Location::parse("file"), Location::Host("file".into()));
    }

    #[test]
    fn guest_names_and_joins() {
        assert_eq!(guest_name("/a/b/"), Some("b"));
        assert_eq!(guest_name("/"), None);
        assert_eq!(guest_name("/a/.."), None);
        assert_eq!(guest_join("/tmp/", "f"), "/tmp/f");
        assert_eq!(guest_join("/", "f"), "/f");
    }

    #[test]
    fn a_host_directory_receives_the_copy_under_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            host_target(tmp.path(), "/etc/hosts").unwrap(),
            tmp.path().join("hosts")
        );
        let new = tmp.path().join("new");
        assert_eq!(host_target(&new, "/etc/hosts").unwrap(), new);
        assert!(host_target(tmp.path(), "/").is_err());
    }

    #[tokio::test]
    async fn both_or_neither_side_in_a_sandbox_is_a_usage_error() {
        for (src, dst) in [("a", "b"), ("x:/a", "y:/b"), ("-", "-"), ("-", "b")] {
            let e = cp(CpArgs {
                src: src.into(),
                dst: dst.into(),
                max_bytes: 1,
            })
            .await
            .unwrap_err();
            assert!(matches!(e, Error::InvalidConfig(_)), "{src} {dst}: {e}");
        }
    }
}
