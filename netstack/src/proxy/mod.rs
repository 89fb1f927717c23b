//! Flows between the guest and the host: TCP splicing, UDP relaying, and the DNS server at the
//! gateway.

pub(crate) mod guest_stream;
pub(crate) mod http_flow;
pub(crate) mod tcp;
pub(crate) mod tls_flow;
pub(crate) mod udp;
