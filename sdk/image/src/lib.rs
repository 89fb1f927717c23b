//! msbvm's OCI image store.
