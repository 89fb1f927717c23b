//! What a plugin writes (hostile): each line through the protocol's reader and the checks the
//! sandbox applies (hello, verdict); and the same bytes as a `--plugin` argument and as a
//! `plugins.toml`. None may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_plugins::external::protocol::{self, FromPlugin};

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        match protocol::parse(line) {
            Ok(FromPlugin::Hello {
                protocol: version,
                hooks,
                ..
            }) => {
                let _ = protocol::hello_interests(version, &hooks);
            }
            Ok(FromPlugin::Decision {
                verdict, reason, ..
            }) => {
                let _ = protocol::verdict(&verdict, reason);
            }
            Ok(FromPlugin::Log { message, .. }) => {
                let cut = protocol::truncate(&message, 17);
                assert!(cut.len() <= 17);
            }
            _ => {}
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = msbvm_plugins::PluginSpec::parse(text, std::path::Path::new("/"));
        let _ = msbvm_plugins::spec::parse_user_file(text, std::path::Path::new("/"));
    }
});
