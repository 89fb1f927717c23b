//! A layer blob through the unpacker into a fresh directory. The first input byte picks plain
//! tar (even) or gzip (odd, the rest is compressed here so the fuzzer works on the tar inside).
//! Whatever the archive says, nothing may appear outside the layer directory.
#![no_main]

use std::io::Write;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// Every path below `dir`, without following symlinks.
fn tree(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            tree(&path, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, archive)) = data.split_first() else {
        return;
    };
    let root = tempfile::tempdir().expect("a temporary directory");
    let blob = root.path().join("blob");
    let bytes = if mode % 2 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(archive).expect("in memory");
        gz.finish().expect("in memory")
    } else {
        archive.to_vec()
    };
    std::fs::write(&blob, bytes).expect("writing the blob");
    let layer = root.path().join("layer");
    std::fs::create_dir(&layer).expect("creating the layer directory");
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).expect("creating a sibling directory");
    let _ = msbvm_image::fuzzing::unpack_layer(&blob, &layer);

    let mut top = Vec::new();
    for entry in std::fs::read_dir(root.path())
        .expect("listing the root")
        .flatten()
    {
        top.push(entry.file_name());
    }
    top.sort();
    assert_eq!(
        top,
        ["blob", "layer", "outside"],
        "something landed beside the layer"
    );
    assert!(
        std::fs::read_dir(&outside)
            .expect("listing")
            .next()
            .is_none(),
        "something landed in a sibling directory"
    );
    let mut inside = Vec::new();
    tree(&layer, &mut inside);
    for path in inside {
        assert!(path.starts_with(&layer), "{}", path.display());
        // Nothing the unpacker wrote may have gone through a symlink: every real file's
        // canonical path is inside the layer.
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_symlink() {
                let real = std::fs::canonicalize(&path).expect("canonical path");
                let base = std::fs::canonicalize(&layer).expect("canonical layer");
                assert!(
                    real.starts_with(&base),
                    "{} resolves outside",
                    path.display()
                );
            }
        }
    }
});
