//! Pure wire formats: no sockets, no threads, no runtime.
//! - [`ws`]: RFC 6455 frames, decoded in place from owned buffers.
//! - [`deflate`]: RFC 7692 permessage-deflate, compressed once per message, no context kept.
//! - [`http`]: HTTP/1.1 request heads with limits, responses, the upgrade handshake.
//! - [`ops`]: protocol v1 JSON ops (client → server) and frames (server → client).

pub mod deflate;
pub mod http;
pub mod ops;
pub mod ws;
