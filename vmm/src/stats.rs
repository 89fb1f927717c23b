//! The VMM's own memory use: resident memory minus the guest RAM's resident pages.

use std::fs;

/// Memory figures of the current process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Resident set size now.
    pub rss_kib: u64,
    /// Peak resident set size.
    pub peak_rss_kib: u64,
    /// Resident pages of the guest RAM mappings.
    pub guest_resident_kib: u64,
}

impl MemoryStats {
    /// What the VMM itself costs on top of the guest's memory.
    pub fn overhead_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_resident_kib)
    }
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Sums the `Rss:` of the mappings in `smaps` that start at one of `starts`.
fn resident_of(smaps: &str, starts: &[usize]) -> u64 {
    let mut total = 0;
    let mut counting = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _end)) = first.split_once('-') {
            if let Ok(start) = usize::from_str_radix(start, 16) {
                counting = starts.contains(&start);
                continue;
            }
        }
        if counting && line.starts_with("Rss:") {
            total += line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// Reads the current process's figures; `guest_starts` are the host addresses
/// where the guest RAM mappings begin. Missing /proc files give zeros.
pub fn read(guest_starts: &[usize]) -> MemoryStats {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let smaps = fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    MemoryStats {
        rss_kib: status_field(&status, "VmRSS:").unwrap_or(0),
        peak_rss_kib: status_field(&status, "VmHWM:").unwrap_or(0),
        guest_resident_kib: resident_of(&smaps, guest_starts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_and_status() {
        let smaps =
            "7f0000000000-7f0010000000 rw-p 00000000 00:00 0\nSize: 262144 kB\nRss: 1024 kB\n\
                     7f0020000000-7f0020001000 r-xp 00000000 00:00 0 /bin/x\nRss: 8 kB\n";
        assert_eq!(resident_of(smaps, &[0x7f00_0000_0000]), 1024);
        assert_eq!(resident_of(smaps, &[]), 0);
        let status = "Name:\tmsbvm\nVmHWM:\t  5000 kB\nVmRSS:\t  4000 kB\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(4000));
        assert_eq!(status_field(status, "VmHWM:"), Some(5000));
    }

    #[test]
    fn reads_this_process() {
        let s = read(&[]);
        assert!(s.rss_kib > 0);
        assert_eq!(s.overhead_kib(), s.rss_kib);
    }
}
