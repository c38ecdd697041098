//! passerelle: mirrors admin-approved WhatsApp groups into Matrix rooms, as one relay
//! bot on each side. DESIGN.md holds the whole design; this is the map.
//!
//! ```text
//! main.rs           the command line (run, check, login, groups, join, status)
//! service.rs        lifecycle: start, signals (SIGHUP reloads), shutdown
//! bridge/           the portal: the configuration in force, reload, both outbox
//!                   workers (to_matrix.rs, to_whatsapp.rs), rooms.rs, upkeep.rs;
//!                   it looks up, stores, sends and retries, and decides nothing
//! relay/            every decision about a message: may it cross, in what words,
//!                   within which window, by whom (to_matrix.rs, to_whatsapp.rs),
//!                   the ids it derives (ids.rs), formatting; no SDK type
//! whatsapp/         the WhatsApp boundary (mod.rs), real/ on whatsapp-rust
//!                   (inbound.rs, outbound.rs, acks.rs), fake.rs for core tests
//! matrix/           the matrix-sdk side: session, rooms, sends (mod.rs), room
//!                   timelines read in order (timeline.rs), files (media.rs)
//! store/            passerelle.db: links, outboxes, names, digests, counters
//! config/           config.toml and groups.d, message templates (template.rs)
//! build_kind.rs     the normal build or the simulator build made for tests
//! status.rs, control.rs, admin.rs, metrics.rs, secret_file.rs: what admins see and
//!                   ask (`passerelle status`, the control socket, /metrics), 0600 files
//! ```
//!
//! One message, three files each way (plus the adapter that finally sends it):
//! - WhatsApp -> Matrix: `whatsapp/real/inbound.rs` reads it,
//!   `bridge/to_matrix.rs` queues and delivers it, `relay/to_matrix.rs` decides
//!   whether it crosses and what the room reads (posted by `matrix/mod.rs`).
//! - Matrix -> WhatsApp: `matrix/timeline.rs` reads it, `bridge/to_whatsapp.rs`
//!   queues and delivers it, `relay/to_whatsapp.rs` decides whether it crosses, what
//!   the number says and which changes it may make (sent by
//!   `whatsapp/real/outbound.rs`).
#![recursion_limit = "256"]

pub mod admin;
mod bridge;
pub mod build_kind;
pub mod config;
pub mod control;
pub mod matrix;
pub mod metrics;
pub mod relay;
pub mod secret_file;
pub mod service;
pub mod status;
pub mod store;
pub mod whatsapp;
