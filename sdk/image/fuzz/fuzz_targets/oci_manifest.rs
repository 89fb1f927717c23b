//! Registry JSON as the pull and import code parse it: manifests, indexes (with the platform
//! choice), image configs and `docker save` manifests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    msbvm_image::fuzzing::parse_image_json(data);
});
