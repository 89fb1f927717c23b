//! The policy rule grammar: whatever parses prints back to text that parses to the same rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_netstack::policy::Rule;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = Rule::parse(text) {
        let printed = rule.to_string();
        let again = Rule::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(again, rule, "{text:?} printed as {printed:?}");
    }
});
