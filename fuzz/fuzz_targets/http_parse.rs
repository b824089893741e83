//! Feeds arbitrary bytes to the HTTP request parser with the default limits: it must never
//! panic, never claim more bytes than it was given, and whatever it accepts must survive
//! the upgrade checks and the helpers the router calls.
//!
//! Run: `cargo +nightly fuzz run http_parse`
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_fuzz::protocol::http::{
    error_response, parse_request, upgrade_response, websocket_upgrade, HttpLimits, Parsed,
};

fuzz_target!(|data: &[u8]| {
    let limits = HttpLimits::default();
    match parse_request(data, &limits) {
        Ok(Parsed::Incomplete) => {}
        Ok(Parsed::Complete { request, consumed }) => {
            assert!(consumed <= data.len());
            assert!(request.body.len() <= limits.body_bytes_max);
            let _ = request.query_param("token");
            let _ = request.bearer_token();
            match websocket_upgrade(&request) {
                Ok(upgrade) => drop(upgrade_response(&upgrade)),
                Err(error) => drop(error_response(&error, request.keep_alive)),
            }
        }
        Err(error) => {
            assert!((400..=599).contains(&error.status));
            drop(error_response(&error, false));
        }
    }
});
