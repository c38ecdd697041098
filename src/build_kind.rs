//! Which kind of build this is: the normal one, which only ever talks to WhatsApp,
//! or the simulator build made for tests (cargo feature `simulator`). Read by the
//! configuration (a normal build refuses a simulator URL) and by the WhatsApp side
//! (which server a build may talk to, `whatsapp/server.rs`).

/// Whether this build was made to talk to a simulator (cargo feature `simulator`).
pub const SIMULATOR_BUILD: bool = cfg!(feature = "simulator");

/// Why a normal build refuses `[whatsapp] server_url`.
pub const URL_IN_NORMAL_BUILD: &str = "`[whatsapp] server_url` points passerelle at a WhatsApp simulator; only a build made for tests (`cargo build --features simulator`) accepts it. Remove the key to use WhatsApp";
