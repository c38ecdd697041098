//! Shared helpers for the integration tests (each test binary includes this with `mod common;`).
#![allow(dead_code)]

pub mod bridge;
pub mod late_keys;
pub mod matrix_user;
pub mod slow_proxy;
pub mod synapse;
