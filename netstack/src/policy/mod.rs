//! Network policy: which flows, DNS names and HTTP requests a sandbox may use.
