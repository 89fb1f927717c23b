//! The kernel source: where the distribution puts it and which version is installed.
//!
//! The version is part of the cache key, so that a distribution update of the source (a
//! security fix, say) leads to a fresh build instead of silently reusing the old image.

use std::path::Path;
use std::process::Command;
use std::time::UNIX_EPOCH;

pub use crate::packages::{SOURCE_PACKAGE, SOURCE_TARBALL};

use crate::error::{Error, IoContext};

/// A string that changes whenever the installed kernel source changes.
///
/// It is the package version from `dpkg-query` ("deb:6.12.117-1~deb12u1"). Where dpkg is not
/// available or does not know the package (a tarball put there by hand), and for any tarball
/// other than [`SOURCE_TARBALL`], the tarball's size and modification time stand in
/// (`file:<size>:<mtime>`).
pub fn source_version(tarball: &Path) -> Result<String, Error> {
    let packaged = tarball == Path::new(SOURCE_TARBALL);
    version_from(packaged.then(dpkg_version).flatten(), tarball)
}

fn version_from(dpkg_version: Option<String>, tarball: &Path) -> Result<String, Error> {
    if let Some(version) = dpkg_version {
        return Ok(format!("deb:{version}"));
    }
    let meta = match tarball.metadata() {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::SourceMissing {
                tarball: tarball.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io(format!("reading {}", tarball.display()), e)),
    };
    let mtime = meta
        .modified()
        .context(|| format!("reading the modification time of {}", tarball.display()))?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(format!("file:{}:{}", meta.len(), mtime))
}

/// The installed version of [`SOURCE_PACKAGE`], or `None` when dpkg-query is missing or the
/// package is not installed.
fn dpkg_version() -> Option<String> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", SOURCE_PACKAGE])
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !version.is_empty()).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    #[test]
    fn dpkg_version_wins() {
        let v = version_from(Some("6.12.1-1".into()), Path::new("/nonexistent")).unwrap();
        assert_eq!(v, "deb:6.12.1-1");
    }

    #[test]
    fn falls_back_to_tarball_size_and_mtime() {
        let tmp = TempDir::new().unwrap();
        let tarball = tmp.path().join("src.tar.xz");
        std::fs::write(&tarball, b"12345").unwrap();
        let v = version_from(None, &tarball).unwrap();
        assert!(v.starts_with("file:5:"), "{v}");
    }

    #[test]
    fn missing_source_is_a_clear_error() {
        let err = version_from(None, Path::new("/nonexistent/linux.tar.xz")).unwrap_err();
        assert!(matches!(err, Error::SourceMissing { .. }));
        assert!(err
            .to_string()
            .contains("apt-get install linux-source-6.12"));
    }
}
