//! Link settings for a Node-API addon (its `napi_*` symbols are resolved by Node at load time).
fn main() {
    napi_build::setup();
}
