//! The pin table: which names the guest resolved, through our DNS server, to
//! which addresses. DNS-name rules match a flow's destination through it, so
//! a rule `allow example.com` opens exactly the addresses our DNS answered
//! for example.com, and a guest cannot claim a name for an address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Shortest time a pin lives, whatever the record's TTL: programs often
/// connect a little after their resolver's cache entry expired.
pub const MIN_PIN_TTL: Duration = Duration::from_secs(30);

/// Longest time a pin lives, so a huge TTL cannot keep an entry forever.
pub const MAX_PIN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Most addresses the table holds; past that the entry closest to expiry
/// goes first. Bounds the memory a guest can make us spend on lookups.
pub const MAX_PINNED_ADDRESSES: usize = 4096;

/// Most names one address keeps (CDN addresses serve many names).
pub const MAX_NAMES_PER_ADDRESS: usize = 16;

#[derive(Debug)]
struct Pin {
    name: String,
    expires: Instant,
}

/// Address -> names the guest resolved to it, with expiry. Cloning shares
/// the table; all methods are safe from several threads.
#[derive(Clone, Debug, Default)]
pub struct PinTable {
    inner: Arc<Mutex<HashMap<IpAddr, Vec<Pin>>>>,
}

impl PinTable {
    /// An empty table.
    pub fn new() -> PinTable {
        PinTable::default()
    }

    /// Records that our DNS answered `ip` for `name`, for `ttl` (clamped to
    /// [`MIN_PIN_TTL`]..=[`MAX_PIN_TTL`]).
    pub fn pin(&self, ip: IpAddr, name: &str, ttl: Duration) {
        let now = Instant::now();
        let expires = now + ttl.clamp(MIN_PIN_TTL, MAX_PIN_TTL);
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut table = self.inner.lock().unwrap_or_else(PoisonError::into_inner);

        if !table.contains_key(&ip) && table.len() >= MAX_PINNED_ADDRESSES {
            table.retain(|_, pins| pins.iter().any(|p| p.expires > now));
            if table.len() >= MAX_PINNED_ADDRESSES {
                let oldest = table
                    .iter()
                    .min_by_key(|(_, pins)| pins.iter().map(|p| p.expires).max())
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    table.remove(&oldest);
                }
            }
        }

        let pins = table.entry(ip).or_default();
        if let Some(pin) = pins.iter_mut().find(|p| p.name == name) {
            pin.expires = pin.expires.max(expires);
            return;
        }
        pins.retain(|p| p.expires > now);
        if pins.len() >= MAX_NAMES_PER_ADDRESS {
            if let Some(first) = (0..pins.len()).min_by_key(|&i| pins[i].expires) {
                pins.swap_remove(first);
            }
        }
        pins.push(Pin { name, expires });
    }

    /// The unexpired names pinned to `ip`, lowercase, without trailing dot.
    pub fn names(&self, ip: IpAddr) -> Vec<String> {
        let now = Instant::now();
        let table = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        table
            .get(&ip)
            .map(|pins| {
                pins.iter()
                    .filter(|p| p.expires > now)
                    .map(|p| p.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many addresses have pins (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no address has pins.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Test hook: pins with an explicit expiry instant (may be in the past).
    #[cfg(test)]
    pub(crate) fn pin_until(&self, ip: IpAddr, name: &str, expires: Instant) {
        let mut table = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        table.entry(ip).or_default().push(Pin {
            name: name.to_owned(),
            expires,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn pinned_names_are_found_normalized_and_shared_by_clones() {
        let table = PinTable::new();
        let clone = table.clone();
        clone.pin(ip(1), "Example.COM.", Duration::from_secs(5));
        assert_eq!(table.names(ip(1)), vec!["example.com".to_owned()]);
        assert!(table.names(ip(2)).is_empty());
    }

    #[test]
    fn expired_pins_are_not_reported() {
        let table = PinTable::new();
        table.pin_until(
            ip(1),
            "old.example",
            Instant::now() - Duration::from_secs(1),
        );
        assert!(table.names(ip(1)).is_empty());
    }

    #[test]
    fn table_size_and_names_per_address_are_bounded() {
        let table = PinTable::new();
        for n in 0..(MAX_PINNED_ADDRESSES as u32 + 100) {
            table.pin(ip(n), "a.example", Duration::from_secs(60 + u64::from(n)));
        }
        assert_eq!(table.len(), MAX_PINNED_ADDRESSES);
        // The longest-lived entries survive.
        assert!(!table.names(ip(MAX_PINNED_ADDRESSES as u32 + 99)).is_empty());
        assert!(table.names(ip(0)).is_empty());

        for n in 0..40 {
            table.pin(ip(7), &format!("n{n}.example"), Duration::from_secs(60));
        }
        assert_eq!(table.names(ip(7)).len(), MAX_NAMES_PER_ADDRESS);
    }
}
