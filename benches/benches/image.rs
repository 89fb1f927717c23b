//! Image benchmark: pull + unpack of a generated three-layer image from a local registry,
//! msbvm's image store side by side with skopeo + umoci, in the same run.
//!
//! ```text
//! cargo bench -p msbvm-benches --bench image
//! ```
//!
//! A `docker-registry` on 127.0.0.1 holds two images that share their lower two layers (see
//! `msbvm_benches::image_bench`). Each run starts from an empty directory per tool:
//!
//! - msbvm: `ImageStore::open` + `pull` of the first image (download, digest checks, unpack),
//!   then of the second into the same store (only its new layer is fetched and unpacked);
//! - peer: `skopeo copy` into an OCI layout + `umoci unpack --rootless` into a bundle, then the
//!   same for the second image into the same layout (skopeo reuses the blobs) and a second
//!   bundle (umoci unpacks every layer again: it has no layer store).
//!
//! Medians go to a table on stdout with msbvm's ratio to the peer and the disk space each left.
//! Environment: `MSBVM_BENCH_RUNS` (runs per tool, default 5). Needs `docker-registry`,
//! `skopeo` and `umoci` (distribution packages); a missing peer prints one `skipped:` line and
//! msbvm is measured alone.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use msbvm_benches::boot_runs::env_count;
use msbvm_benches::image_bench::{
    build_images, disk_usage, missing_peer, msbvm_pull, peer_pull, BenchImage, BenchResult,
    PeerTimes, Registry,
};
use msbvm_benches::{bench_mode, exit, median, ratio};
use msbvm_tests::artifacts::target_dir;

const REPOSITORY: &str = "bench/img";

/// Samples of one tool, in seconds and bytes.
#[derive(Default)]
struct Samples {
    first: Vec<f64>,
    second: Vec<f64>,
    copy: Vec<f64>,
    unpack: Vec<f64>,
    disk: Vec<f64>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

async fn bench() -> BenchResult<()> {
    if !Path::new(msbvm_tests::registry::REGISTRY_BIN).exists() {
        println!("skipped: docker-registry not installed (apt-get install -y docker-registry)");
        return Ok(());
    }
    let runs = env_count("MSBVM_BENCH_RUNS", 5);
    let peer_missing = missing_peer();
    if let Some(why) = &peer_missing {
        println!("skopeo+umoci: skipped: {why}");
    }
    let work = target_dir().join("bench-image");
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;

    let (first, second) = build_images()?;
    let registry = Registry::start(&work)?;
    registry.push(&format!("{REPOSITORY}:1"), &first).await?;
    registry.push(&format!("{REPOSITORY}:2"), &second).await?;
    eprintln!(
        "image bench: {} entries, {:.1} MiB of tar, {:.1} MiB gzip in {} layers; second image shares {} layers; {runs} runs on {}",
        first.entries(),
        first.tar_len() as f64 / 1048576.0,
        first.compressed_len() as f64 / 1048576.0,
        first.layers.len(),
        first.layers.len() - 1,
        registry.host
    );

    let (ours, peer) = measure(runs, &work, &registry, peer_missing.is_none()).await?;
    report(&first, runs, &ours, &peer, peer_missing.is_none());
    Ok(())
}

/// Pulls both images `runs` times with msbvm and, when `with_peer`, with skopeo+umoci, each
/// run into fresh directories under `work`.
async fn measure(
    runs: u32,
    work: &Path,
    registry: &Registry,
    with_peer: bool,
) -> BenchResult<(Samples, Samples)> {
    let mut ours = Samples::default();
    let mut peer = Samples::default();
    for run in 1..=runs {
        // One directory per run and tool, removed after measuring, so every run starts cold
        // on the disk side (the registry's files stay in the page cache for both).
        let dir = tempfile::tempdir_in(work).map_err(|e| format!("temp dir: {e}"))?;
        let store = dir.path().join("store");
        let t1 = msbvm_pull(&store, &registry.host, &format!("{REPOSITORY}:1")).await?;
        let t2 = msbvm_pull(&store, &registry.host, &format!("{REPOSITORY}:2")).await?;
        ours.first.push(secs(t1));
        ours.second.push(secs(t2));
        ours.disk.push(disk_usage(&store) as f64);
        eprintln!(
            "image bench: run {run}: msbvm {:.3} s + {:.3} s",
            secs(t1),
            secs(t2)
        );
        if with_peer {
            let pull = |tag: &str| {
                let bundle = dir.path().join(format!("bundle{tag}"));
                peer_pull(dir.path(), &registry.host, REPOSITORY, tag, &bundle)
            };
            let p1 = pull("1")?;
            let p2 = pull("2")?;
            let total = |p: &PeerTimes| secs(p.copy + p.unpack);
            peer.first.push(total(&p1));
            peer.second.push(total(&p2));
            peer.copy.push(secs(p1.copy));
            peer.unpack.push(secs(p1.unpack));
            peer.disk.push(
                (disk_usage(&dir.path().join("layout"))
                    + disk_usage(&dir.path().join("bundle1"))
                    + disk_usage(&dir.path().join("bundle2"))) as f64,
            );
            eprintln!(
                "image bench: run {run}: skopeo {:.3} s + umoci {:.3} s, then {:.3} s + {:.3} s",
                secs(p1.copy),
                secs(p1.unpack),
                secs(p2.copy),
                secs(p2.unpack)
            );
        }
    }

    Ok((ours, peer))
}

/// Prints the medians of both tools and their ratios.
fn report(first: &BenchImage, runs: u32, ours: &Samples, peer: &Samples, with_peer: bool) {
    let med = |v: &Vec<f64>| median(v.clone());
    println!();
    println!(
        "image: {} entries, {:.1} MiB tar / {:.1} MiB gzip, 3 layers (whiteouts in the top one); second image shares 2 layers; local registry; medians of {runs} runs",
        first.entries(),
        first.tar_len() as f64 / 1048576.0,
        first.compressed_len() as f64 / 1048576.0,
    );
    println!(
        "{:<20} {:>14} {:>15} {:>12} {:>12} {:>17}",
        "tool", "first image s", "second image s", "download s", "unpack s", "disk MiB (both)"
    );
    let mib = |v: Option<f64>| v.map(|b| b / 1048576.0);
    println!(
        "{:<20} {:>14} {:>15} {:>12} {:>12} {:>17}",
        "msbvm",
        cell(med(&ours.first), 3),
        cell(med(&ours.second), 3),
        "-",
        "-",
        cell(mib(med(&ours.disk)), 1)
    );
    if with_peer {
        println!(
            "{:<20} {:>14} {:>15} {:>12} {:>12} {:>17}",
            "skopeo+umoci",
            cell(med(&peer.first), 3),
            cell(med(&peer.second), 3),
            cell(med(&peer.copy), 3),
            cell(med(&peer.unpack), 3),
            cell(mib(med(&peer.disk)), 1)
        );
        println!(
            "msbvm/skopeo+umoci: first image x{}, second image x{}, disk x{}",
            cell(ratio(med(&ours.first), med(&peer.first)), 3),
            cell(ratio(med(&ours.second), med(&peer.second)), 3),
            cell(ratio(med(&ours.disk), med(&peer.disk)), 3),
        );
    }
}

fn main() -> ExitCode {
    if !bench_mode("image") {
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("image bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    exit("image", runtime.block_on(bench()))
}
