//! Wiring only: config → gateway (or doctor, worker, dlq) → exit code.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    let command = match ringcast::config::load() {
        Ok(command) => command,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    let code = match command {
        ringcast::config::Command::Gateway(config) => ringcast::cmd::gateway::run(config),
        ringcast::config::Command::Doctor { connections, http_connections } => ringcast::cmd::doctor::run(connections, http_connections),
        ringcast::config::Command::Worker(config) => ringcast::cmd::worker::run(config),
        ringcast::config::Command::Dlq { lane, action } => ringcast::cmd::dlq::run(lane, action),
    };
    std::process::exit(code);
}
