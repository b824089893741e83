//! ringcast: a thread-per-core io_uring WebSocket gateway.
