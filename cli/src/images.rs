//! `msbvm pull`, `msbvm import`, `msbvm images` and `msbvm rmi`: the local image store.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use msbvm_sdk::images::{self, Auth, IndicatifProgress, PullOptions};
use msbvm_sdk::Error;

/// Arguments of `msbvm pull`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct PullArgs {
    /// The image: `host[:port]/repository[:tag|@digest]` (a reference without a registry
    /// host uses $MSBVM_REGISTRY).
    pub reference: String,
    /// Reach the image's registry over plain HTTP (local registries only).
    #[arg(long)]
    pub plain_http: bool,
    /// Registry user name (basic or token auth); the password is read from stdin.
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
    /// A bearer token for the registry, read from stdin.
    #[arg(long, conflicts_with = "username")]
    pub token_stdin: bool,
}

/// Arguments of `msbvm import`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ImportArgs {
    /// An OCI image layout directory or a `docker save` tarball.
    pub path: PathBuf,
    /// The reference to store it under (default: the one recorded in the archive).
    #[arg(long = "name", value_name = "REF")]
    pub reference: Option<String>,
}

/// Arguments of `msbvm images`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ImagesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `msbvm rmi`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct RmiArgs {
    /// The images.
    #[arg(required = true)]
    pub references: Vec<String>,
}

fn read_secret() -> Result<String, Error> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| Error::InvalidConfig(format!("reading the secret from stdin: {e}")))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

/// The registry part of a reference (`host[:port]`), when it has one.
fn registry_of(reference: &str) -> Option<String> {
    let first = reference.split('/').next()?;
    let has_path = reference.contains('/');
    (has_path && (first.contains('.') || first.contains(':') || first == "localhost"))
        .then(|| first.to_string())
}

/// Runs `msbvm pull`.
pub async fn pull(args: PullArgs) -> Result<u8, Error> {
    let mut options: PullOptions = images::options_from_env();
    if args.plain_http {
        match registry_of(&args.reference) {
            Some(r) => options.insecure_plain_http_registries.push(r),
            None => {
                return Err(Error::InvalidConfig(format!(
                    "--plain-http needs a reference that names its registry, not {:?}",
                    args.reference
                )))
            }
        }
    }
    if let Some(username) = args.username {
        options.auth = Auth::Basic {
            username,
            password: read_secret()?,
        };
    } else if args.token_stdin {
        options.auth = Auth::Bearer(read_secret()?);
    }
    let store = images::store()?;
    let progress = IndicatifProgress::new();
    let info = store
        .pull(&args.reference, &options, &progress)
        .await
        .map_err(images::image_error)?;
    println!("{} {}", info.reference, info.manifest_digest);
    Ok(0)
}

/// Runs `msbvm import`.
pub fn import(args: ImportArgs) -> Result<u8, Error> {
    let store = images::store()?;
    let info = if args.path.is_dir() {
        store.import_oci_layout(&args.path, args.reference.as_deref())
    } else {
        store.import_docker_archive(&args.path, args.reference.as_deref())
    }
    .map_err(images::image_error)?;
    println!("{} {}", info.reference, info.manifest_digest);
    Ok(0)
}

/// Runs `msbvm images`.
pub fn list(args: ImagesArgs) -> Result<u8, Error> {
    let store = images::store()?;
    // The embedded image is always available; list it once it has been used.
    let list = store.list().map_err(images::image_error)?;
    if args.json {
        let items: Vec<serde_json::Value> = list
            .iter()
            .map(|i| {
                serde_json::json!({
                    "reference": i.reference,
                    "manifest_digest": i.manifest_digest,
                    "config_digest": i.config_digest,
                    "size": i.size,
                    "created": i.created,
                    "layers": i.layers,
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&items)
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        println!("{text}");
    } else {
        println!("{:<48} {:<19} {:>10}", "REFERENCE", "DIGEST", "SIZE");
        for i in list {
            let digest = i.manifest_digest.trim_start_matches("sha256:");
            println!(
                "{:<48} {:<19} {:>10}",
                i.reference,
                &digest[..digest.len().min(12)],
                human_size(i.size)
            );
        }
    }
    Ok(0)
}

/// Runs `msbvm rmi`.
pub fn remove(args: RmiArgs) -> Result<u8, Error> {
    let store = images::store()?;
    let mut status = 0;
    for r in args.references {
        match store.remove(&r) {
            Ok(()) => println!("{r}"),
            Err(e) => {
                eprintln!("msbvm: error: {r}: {e}");
                status = 1;
            }
        }
    }
    Ok(status)
}

/// Pulls the image `msbvm run` needs, with progress bars, when it is missing.
pub async fn ensure_for_run(reference: &str) -> Result<(), Error> {
    images::ensure(
        reference,
        &images::options_from_env(),
        &IndicatifProgress::new(),
    )
    .await
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_found_only_when_named() {
        assert_eq!(
            registry_of("localhost:5000/a:1").as_deref(),
            Some("localhost:5000")
        );
        assert_eq!(
            registry_of("reg.example/a/b").as_deref(),
            Some("reg.example")
        );
        assert_eq!(registry_of("alpine:3"), None);
        assert_eq!(registry_of("library/alpine"), None);
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }
}
