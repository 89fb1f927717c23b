//! HTTP request-head parsing for HTTP policy.
