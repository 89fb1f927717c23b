//! Generated sandbox names (`brave-otter`) for callers that do not pick one.

use std::path::Path;

use crate::paths::SandboxDir;

const ADJECTIVES: [&str; 32] = [
    "amber", "bold", "brave", "brisk", "calm", "clever", "cosy", "crisp", "eager", "fancy",
    "gentle", "glad", "happy", "jolly", "keen", "kind", "lively", "lucky", "mellow", "merry",
    "nimble", "noble", "proud", "quick", "quiet", "rapid", "shiny", "snug", "swift", "tidy",
    "vivid", "witty",
];
const NOUNS: [&str; 32] = [
    "badger", "bison", "crane", "dingo", "eagle", "falcon", "ferret", "gecko", "heron", "ibis",
    "koala", "lemur", "lynx", "marten", "newt", "ocelot", "otter", "panda", "puffin", "quail",
    "raven", "robin", "seal", "shrew", "stoat", "swan", "tapir", "tern", "vole", "walrus", "wren",
    "yak",
];

/// 64 random bits from the kernel (falling back to the clock, which only costs uniqueness).
fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(buf)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    }
}

/// A random `adjective-noun` name, with a hex suffix once the plain names seem taken.
pub fn random_name(attempt: u32) -> String {
    let r = random_u64();
    let adjective = ADJECTIVES[(r % 32) as usize];
    let noun = NOUNS[((r >> 8) % 32) as usize];
    if attempt < 4 {
        format!("{adjective}-{noun}")
    } else {
        format!("{adjective}-{noun}-{:04x}", (r >> 16) & 0xffff)
    }
}

/// A generated name that no sandbox under `home` uses (live or only recorded), so a new
/// sandbox never replaces a stopped one's logs.
pub fn unused_name(home: &Path) -> String {
    let mut attempt = 0;
    loop {
        let name = random_name(attempt);
        match SandboxDir::in_home(home, &name) {
            Ok(dir) if !dir.path().exists() => return name,
            _ => attempt += 1,
        }
        if attempt > 64 {
            return format!("msbvm-{:016x}", random_u64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::validate_name;
    use tempfile::TempDir;

    #[test]
    fn generated_names_are_valid() {
        for attempt in 0..8 {
            let n = random_name(attempt);
            validate_name(&n).unwrap();
            assert_eq!(
                n.matches('-').count(),
                if attempt < 4 { 1 } else { 2 },
                "{n}"
            );
        }
    }

    #[test]
    fn unused_name_avoids_existing_dirs() {
        let tmp = TempDir::new().unwrap();
        for _ in 0..20 {
            let n = unused_name(tmp.path());
            let dir = SandboxDir::in_home(tmp.path(), &n).unwrap();
            assert!(!dir.path().exists());
            std::fs::create_dir_all(dir.path()).unwrap();
        }
    }
}
