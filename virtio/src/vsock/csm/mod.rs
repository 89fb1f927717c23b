//! The per-connection state machine ([`connection`]) and its bounded buffer
//! toward the host socket ([`txbuf`]), kept apart from the muxer that owns
//! sockets and epoll so the protocol logic reads top to bottom.

pub mod connection;
pub mod txbuf;
