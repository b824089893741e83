//! The gateway's pure wire-format modules, compiled from the gateway's own source files.
//! The fuzz build instruments every crate it compiles; depending on the whole `ringcast`
//! crate would instrument its engine clients too (async-nats, TLS, ...) and multiply the
//! build time, while the fuzz targets only reach these modules (deflate: the upgrade
//! answer negotiates permessage-deflate, and the decoder inflates).
#![allow(dead_code)]

#[path = "../../src/protocol/deflate.rs"]
pub mod deflate;
#[path = "../../src/protocol/http.rs"]
pub mod http;
#[path = "../../src/protocol/ops.rs"]
pub mod ops;
#[path = "../../src/protocol/ws.rs"]
pub mod ws;

/// The same paths as in the gateway (`ringcast::protocol::…`).
pub mod protocol {
    pub use crate::{deflate, http, ops, ws};
}
