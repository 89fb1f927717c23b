//! Network benchmark: TCP through msbvm's user-mode netstack side by side with slirp4netns
//! and pasta, without a VM, under identical conditions; and msbvm with an in-process plugin
//! deciding every flow and told its bytes (`msbvm-plugin`), for what plugins cost;
//! msbvm without checksum and segment offload (`msbvm-plain`), for what those change; and
//! msbvm with the device's frame pumps on threads of their own (`msbvm-threaded`, how the
//! virtio-net device ran before it moved onto the stack's thread), for what that move gains.
//!
//! ```text
//! cargo bench -p msbvm-benches --bench net
//! ```
//!
//! Each stack serves a fresh network namespace through a TAP device (see
//! `msbvm_benches::net_bench`); the namespace's kernel plays the guest. Per MTU (1500 and
//! 65520, the same for every stack) and run (runs interleaved: each measures every stack
//! once, each starting with another): `iperf3 -c <host alias> -t SECS` from the
//! namespace to an `iperf3 -s` on the host's 127.0.0.1 (guest to host), the same with `-R`
//! (host to guest), and a connection-rate loop (connect, wait for the host's FIN, repeat).
//! CPU per GB is the stack's CPU time during a transfer over the bytes moved: for msbvm the
//! netstack thread (which runs the frame pump standing in for virtio-net, as a sandbox's
//! stack thread runs the device), the pump threads of `msbvm-threaded` and the plugin
//! decision threads (the stack thread alone in brackets); for a peer its process.
//!
//! Environment: `MSBVM_BENCH_RUNS` (runs per stack and MTU, default 3), `MSBVM_BENCH_SECS`
//! (iperf3 seconds, default 5), `MSBVM_BENCH_CONNS` (connections per rate sample, default
//! 300), `MSBVM_BENCH_MTUS` (comma-separated, default `1500,65520`), `MSBVM_BENCH_STACKS`
//! (comma-separated subset of msbvm, msbvm-threaded, msbvm-plain, msbvm-plugin, slirp4netns,
//! pasta; default
//! all);
//! `--quick`: 1 run, 2 s, 50 connections, MTU 1500. Needs root, /dev/net/tun,
//! iproute2 and iperf3; slirp4netns and pasta (package passt) are peers, each skipped with one
//! line when missing or failing.

use std::net::TcpListener;
use std::process::ExitCode;

use msbvm_benches::boot_runs::env_count;
use msbvm_benches::net_bench::{
    connection_rate, iperf, missing_privilege, missing_stack, BenchResult, IperfServer, Link,
    STACKS,
};
use msbvm_benches::{bench_mode, by_mode, exit, median, quick, ratio};

/// Samples of one stack at one MTU.
#[derive(Default)]
struct Samples {
    up_gbit: Vec<f64>,
    down_gbit: Vec<f64>,
    conns: Vec<f64>,
    cpu_up: Vec<f64>,
    cpu_down: Vec<f64>,
    stack_cpu_up: Vec<f64>,
    stack_cpu_down: Vec<f64>,
}

/// One run of every measurement on a fresh link.
fn measure(
    stack: &str,
    mtu: usize,
    server: &IperfServer,
    listener: &TcpListener,
    secs: u32,
    conns: u32,
    into: &mut Samples,
) -> BenchResult<()> {
    let link = Link::start(stack, mtu)?;
    let target = link.host_address();
    for reverse in [false, true] {
        let (cpu0, stack0) = link.cpu_seconds();
        let t = iperf(link.ns(), target, server.port, secs, reverse)?;
        let (cpu1, stack1) = link.cpu_seconds();
        let gb = t.bytes / 1e9;
        let (rate, cpu, stack_cpu) = if reverse {
            (
                &mut into.down_gbit,
                &mut into.cpu_down,
                &mut into.stack_cpu_down,
            )
        } else {
            (&mut into.up_gbit, &mut into.cpu_up, &mut into.stack_cpu_up)
        };
        rate.push(t.bits_per_second / 1e9);
        if gb > 0.0 {
            cpu.push((cpu1 - cpu0) / gb);
            stack_cpu.push((stack1 - stack0) / gb);
        }
    }
    into.conns
        .push(connection_rate(link.ns(), target, listener, conns)?);
    Ok(())
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn bench() -> BenchResult<()> {
    if let Some(why) = missing_privilege() {
        println!("skipped: {why}");
        return Ok(());
    }
    let runs = env_count("MSBVM_BENCH_RUNS", by_mode(3, 1));
    let secs = env_count("MSBVM_BENCH_SECS", by_mode(5, 2));
    let conns = env_count("MSBVM_BENCH_CONNS", by_mode(300, 50));
    let mtus: Vec<usize> = std::env::var("MSBVM_BENCH_MTUS")
        .unwrap_or_else(|_| if quick() { "1500" } else { "1500,65520" }.into())
        .split(',')
        .filter_map(|m| m.trim().parse().ok())
        .collect();
    let wanted = std::env::var("MSBVM_BENCH_STACKS").unwrap_or_default();
    let mut stacks: Vec<&str> = Vec::new();
    for stack in STACKS {
        if !wanted.is_empty() && !wanted.split(',').any(|w| w.trim() == stack) {
            continue;
        }
        match missing_stack(stack) {
            Some(why) => println!("{stack}: skipped: {why}"),
            None => stacks.push(stack),
        }
    }
    let server = IperfServer::start()?;
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a listener: {e}"))?;

    let mut results: Vec<(usize, &str, Samples)> = Vec::new();
    for &mtu in &mtus {
        let first = results.len();
        for &stack in &stacks {
            results.push((mtu, stack, Samples::default()));
        }
        // Interleaved: each run measures every stack once, each run starting with another,
        // so drift in the machine spreads over all of them.
        let mut failed = vec![false; stacks.len()];
        for run in 1..=runs {
            for k in 0..stacks.len() {
                let i = (k + run as usize - 1) % stacks.len();
                let (_, stack, samples) = &mut results[first + i];
                if failed[i] {
                    continue;
                }
                if let Err(e) = measure(stack, mtu, &server, &listener, secs, conns, samples) {
                    if stack.starts_with("msbvm") {
                        return Err(format!("{stack} at MTU {mtu}, run {run}: {e}"));
                    }
                    // A peer that does not work here is reported and left out.
                    println!("{stack} (mtu {mtu}): skipped: {e}");
                    failed[i] = true;
                    continue;
                }
                eprintln!(
                    "net bench: mtu {mtu} {stack} run {run}: up {:.2} Gbit/s, down {:.2} Gbit/s, {:.0} conn/s",
                    samples.up_gbit.last().copied().unwrap_or(0.0),
                    samples.down_gbit.last().copied().unwrap_or(0.0),
                    samples.conns.last().copied().unwrap_or(0.0),
                );
            }
        }
    }

    report(&results, &mtus, runs, secs, conns);
    Ok(())
}

/// Prints the medians of every measured stack per MTU, and msbvm's ratios to the peers.
fn report(results: &[(usize, &str, Samples)], mtus: &[usize], runs: u32, secs: u32, conns: u32) {
    println!();
    println!(
        "net: TCP via a TAP in a fresh netns (no VM) to iperf3 -s on the host's 127.0.0.1; iperf3 -t {secs}; {conns} connections per rate sample; medians of {runs} runs; CPU s/GB = stack CPU / GB moved (msbvm: netstack thread, running the frame pump, + pump threads of msbvm-threaded + plugin threads [netstack thread alone])"
    );
    println!(
        "{:>6} {:<14} {:>11} {:>13} {:>9} {:>18} {:>18}",
        "mtu", "stack", "up Gbit/s", "down Gbit/s", "conn/s", "CPU s/GB up", "CPU s/GB down"
    );
    let med = |v: &Vec<f64>| median(v.clone());
    for (mtu, stack, s) in results {
        if s.up_gbit.is_empty() {
            continue;
        }
        let cpu = |all: &Vec<f64>, own: &Vec<f64>| {
            if stack.starts_with("msbvm") {
                format!("{} [{}]", cell(med(all), 2), cell(med(own), 2))
            } else {
                cell(med(all), 2)
            }
        };
        println!(
            "{:>6} {:<14} {:>11} {:>13} {:>9} {:>18} {:>18}",
            mtu,
            stack,
            cell(med(&s.up_gbit), 2),
            cell(med(&s.down_gbit), 2),
            cell(med(&s.conns), 0),
            cpu(&s.cpu_up, &s.stack_cpu_up),
            cpu(&s.cpu_down, &s.stack_cpu_down),
        );
    }
    for &mtu in mtus {
        let find = |name: &str| {
            results
                .iter()
                .find(|(m, s, samples)| *m == mtu && *s == name && !samples.up_gbit.is_empty())
                .map(|(_, _, samples)| samples)
        };
        let Some(ours) = find("msbvm") else { continue };
        // msbvm/msbvm-plugin below 1 is what the in-process plugin costs.
        // msbvm/msbvm-plain above 1 is what the offloads gain.
        // msbvm/msbvm-threaded above 1 is what running the device on the stack's thread gains.
        for peer in [
            "msbvm-threaded",
            "msbvm-plain",
            "msbvm-plugin",
            "slirp4netns",
            "pasta",
        ] {
            if let Some(theirs) = find(peer) {
                println!(
                    "msbvm/{peer} at mtu {mtu}: up x{}, down x{}, conn/s x{}, CPU/GB up x{}, down x{}",
                    cell(ratio(med(&ours.up_gbit), med(&theirs.up_gbit)), 2),
                    cell(ratio(med(&ours.down_gbit), med(&theirs.down_gbit)), 2),
                    cell(ratio(med(&ours.conns), med(&theirs.conns)), 2),
                    cell(ratio(med(&ours.cpu_up), med(&theirs.cpu_up)), 2),
                    cell(ratio(med(&ours.cpu_down), med(&theirs.cpu_down)), 2),
                );
            }
        }
    }
}

fn main() -> ExitCode {
    if !bench_mode("net") {
        return ExitCode::SUCCESS;
    }
    exit("net", bench())
}
