//! `msbvm-tls-l1-upstream`: the HTTPS upstream of the in-L1 TLS benchmark
//! (`benches/benches/tls_l1.rs`), the same server as the host-side one
//! (`msbvm_benches::tls_bench::upstream`: hyper over rustls, HTTP/1.1 only, `/small` answers
//! 100 B, `/bulk/N` answers N bytes streamed in 64 KiB frames).
//!
//! ```text
//! msbvm-tls-l1-upstream CERT KEY ADDR
//! ```
//!
//! CERT and KEY are PEM files (the leaf and its PKCS#8 key); ADDR is where to listen (the
//! bench uses L1's 127.0.0.1:443, which the guest reaches as the host alias). Built static,
//! as it runs in L1; serves until killed.

use std::process::ExitCode;

use msbvm_benches::tls_bench::pki::Leaf;
use msbvm_benches::tls_bench::upstream::{acceptor, serve};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const USAGE: &str = "usage: msbvm-tls-l1-upstream CERT KEY ADDR";

/// Loads the leaf and serves on `addr` until the process is killed.
fn run(cert: &str, key: &str, addr: &str) -> Result<(), String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let acceptor = acceptor(Leaf { chain, key })?;
    // Two workers, as on the host: the server is not starved by one busy connection.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding {addr}: {e}"))?;
        eprintln!("msbvm-tls-l1-upstream: listening on {addr}");
        serve(listener, acceptor).await;
        Ok(())
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cert, key, addr] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match run(cert, key, addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("msbvm-tls-l1-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}
