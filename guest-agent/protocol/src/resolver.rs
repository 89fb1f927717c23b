//! The guest's resolver files, `/etc/resolv.conf` and `/etc/hosts`, from its
//! [`NetworkSetup`].
//!
//! Both sides write them: the host into an image root's writable layer before the guest
//! boots (through the filesystem backend, no guest round trip), the agent into any other
//! root (a host directory, the initramfs). The content is decided here, once. The agent's
//! names sit in `/etc/hosts` between two marker lines, first so that they win the
//! first-match lookup; the image's own lines follow unchanged, and a later boot on the same
//! root replaces only its block.

use crate::boot::NetworkSetup;

/// First line of the block msbvm owns in `/etc/hosts`.
pub const HOSTS_BEGIN: &str = "# BEGIN msbvm (written at boot; edits here are replaced)";
/// Last line of that block.
pub const HOSTS_END: &str = "# END msbvm";

/// The content of `resolv.conf` for `dns`.
pub fn resolv_conf(dns: &[[u8; 4]]) -> String {
    let mut out = String::from("# written by msbvm at boot\n");
    for [a, b, c, d] in dns {
        out.push_str(&format!("nameserver {a}.{b}.{c}.{d}\n"));
    }
    out
}

/// The new content of `/etc/hosts` given its `existing` content: msbvm's block first (so its
/// names win the first-match lookup), then the image's lines without any earlier block of ours.
pub fn hosts(existing: &str, setup: &NetworkSetup, hostname: &str) -> String {
    let mut kept = Vec::new();
    let mut in_block = false;
    for line in existing.lines() {
        match line.trim() {
            HOSTS_BEGIN => in_block = true,
            HOSTS_END if in_block => in_block = false,
            _ if in_block => {}
            _ => kept.push(line),
        }
    }
    let has_localhost = kept.iter().any(|line| {
        let mut fields = line.split('#').next().unwrap_or("").split_whitespace();
        fields.next() == Some("127.0.0.1") && fields.any(|n| n == "localhost")
    });

    let mut out = String::new();
    out.push_str(HOSTS_BEGIN);
    out.push('\n');
    if !has_localhost {
        out.push_str("127.0.0.1\tlocalhost\n");
    }
    let hostname = valid_names(hostname);
    if !hostname.is_empty() && hostname != "localhost" {
        out.push_str(&format!("{}\t{hostname}\n", dotted(setup.address)));
    }
    for (addr, names) in &setup.hosts {
        let names = valid_names(names);
        if !names.is_empty() {
            out.push_str(&format!("{}\t{names}\n", dotted(*addr)));
        }
    }
    out.push_str(HOSTS_END);
    out.push('\n');
    for line in kept {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The whitespace-separated names in `names` that are safe on a hosts line
/// (no comment sign, no control characters), joined by single spaces.
fn valid_names(names: &str) -> String {
    names
        .split_whitespace()
        .filter(|n| n.chars().all(|c| c.is_ascii_graphic() && c != '#'))
        .collect::<Vec<_>>()
        .join(" ")
}

fn dotted([a, b, c, d]: [u8; 4]) -> String {
    format!("{a}.{b}.{c}.{d}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_every_server() {
        assert_eq!(
            resolv_conf(&NetworkSetup::example().dns),
            "# written by msbvm at boot\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
    }

    #[test]
    fn hosts_block_comes_first_and_keeps_the_image_lines() {
        let image = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n# image comment\n";
        let out = hosts(image, &NetworkSetup::example(), "sandbox-1");
        assert_eq!(
            out,
            format!(
                "{HOSTS_BEGIN}\n10.0.2.15\tsandbox-1\n10.0.2.2\thost.msbvm.internal gateway\n\
                 10.0.2.9\tx good-name\n{HOSTS_END}\n{image}"
            )
        );
        // A second boot replaces its block and nothing else.
        let mut changed = NetworkSetup::example();
        changed.hosts.clear();
        let again = hosts(&out, &changed, "renamed");
        assert_eq!(
            again,
            format!("{HOSTS_BEGIN}\n10.0.2.15\trenamed\n{HOSTS_END}\n{image}")
        );
    }

    #[test]
    fn hosts_adds_localhost_when_the_image_lacks_it() {
        let out = hosts("", &NetworkSetup::example(), "");
        assert!(out.starts_with(&format!("{HOSTS_BEGIN}\n127.0.0.1\tlocalhost\n10.0.2.2")));
        // A commented-out localhost line does not count.
        let out = hosts("# 127.0.0.1 localhost\n", &NetworkSetup::example(), "h");
        assert!(out.contains("\n127.0.0.1\tlocalhost\n"));
    }
}
