//! A private RabbitMQ node for tests that kill the broker: its own node name, AMQP and
//! distribution ports, data and log directories, Erlang cookie (HOME) and config file, so
//! the shared node on 5672 is never touched. Runs as its own process group, so a kill
//! takes `rabbitmq-server`'s shell, `beam.smp` and its helpers together (the host's
//! `epmd` daemon belongs to the shared node and is left alone).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node boots in ~10 s on the 2-core test machine; 60 s leaves room for a loaded one.
const BOOT_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long a killed node's processes may take to disappear.
const EXIT_WAIT_MAX: Duration = Duration::from_secs(10);

pub struct RabbitServer {
    child: Option<Child>,
    pub port: u16,
    dist_port: u16,
    node: String,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn binary() -> &'static str {
    // The /usr/sbin wrapper switches to the `rabbitmq` user and its data directory.
    ["/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
}

impl RabbitServer {
    pub fn start() -> RabbitServer {
        let node = format!("rc-test-{}-{}@localhost", std::process::id(), super::unique() % 1_000_000_000);
        let dir = std::env::temp_dir().join(format!("ringcast-rabbit-{}-{}", std::process::id(), super::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RabbitServer { child: None, port: free_port(), dist_port: free_port(), node, dir };
        std::fs::write(server.dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(server.dir.join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(server.dir.join("rabbitmq.conf"), format!("listeners.tcp.default = 127.0.0.1:{}\n", server.port)).unwrap();
        server.boot();
        server
    }

    pub fn amqp(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn boot(&mut self) {
        let dir = &self.dir;
        let log = std::fs::File::create(dir.join("stdout.log")).unwrap();
        let child = Command::new(binary())
            .env("HOME", dir)
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start rabbitmq-server");
        self.child = Some(child);
        let deadline = Instant::now() + BOOT_WAIT_MAX;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("rabbitmq-server exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "RabbitMQ node {} not up on {} within {BOOT_WAIT_MAX:?}: {}", self.node, self.port, self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    /// SIGKILL of the node's whole process group; returns once none of them is left.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let group = child.id() as i32;
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = child.wait();
        let deadline = Instant::now() + EXIT_WAIT_MAX;
        // kill(-group, 0) fails with ESRCH once no process of the group is left.
        while unsafe { libc::kill(-group, 0) } == 0 {
            assert!(Instant::now() < deadline, "processes of RabbitMQ node {} (group {group}) survived SIGKILL", self.node);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Boots the node again with the same name and data: durable queues and persistent
    /// messages survive.
    pub fn restart(&mut self) {
        self.kill();
        self.boot();
    }
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = child.id() as i32;
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            for _ in 0..500 {
                if unsafe { libc::kill(-group, 0) } != 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
