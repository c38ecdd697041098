//! passerelle: mirrors admin-approved WhatsApp groups into Matrix rooms, as one relay
//! bot on each side. See DESIGN.md for the map of the code.
#![recursion_limit = "256"]

pub mod admin;
mod bridge;
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
