//! The DNS server the guest talks to at the gateway address.
