//! The host side of the vsock device: Unix sockets. [`muxer`] maps guest
//! connections to host streams; [`socket`] holds the few raw socket calls.

pub mod muxer;
pub mod socket;
