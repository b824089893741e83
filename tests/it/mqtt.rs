//! IoT devices over MQTT through NATS (README, "IoT devices over MQTT"): a private
//! nats-server with its MQTT 3.1.1 listener (JetStream and a server name, as it needs),
//! a gateway on that NATS, dashboards on real WebSockets, and a real MQTT client
//! (`mosquitto_pub`, Debian's mosquitto-clients) publishing with QoS 0 and QoS 1.

use crate::common::nats::{free_port, wait_for_port};
use crate::common::{connect, recv_json, request, unique, Gateway};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// nats-server with client and MQTT listeners on free ports; JetStream in a temp dir.
struct MqttNats {
    child: Child,
    port: u16,
    mqtt: u16,
    dir: PathBuf,
}

impl MqttNats {
    fn start() -> MqttNats {
        let (port, mqtt) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("ringcast-mqtt-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("nats.conf");
        let text = format!(
            "server_name: rc_mqtt_{port}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\nmqtt {{ listen: 127.0.0.1:{mqtt} }}\n",
            dir.join("js")
        );
        std::fs::write(&config, text).unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/services.sh installs it)");
        assert!(wait_for_port(port, Duration::from_secs(10)), "private nats-server did not listen on {port}");
        assert!(wait_for_port(mqtt, Duration::from_secs(10)), "nats-server's MQTT listener did not listen on {mqtt}");
        MqttNats { child, port, mqtt, dir }
    }

    /// One device publish with `mosquitto_pub` (connect, publish, disconnect); QoS 1 waits
    /// for the server's PUBACK before it exits 0.
    fn publish(&self, client_id: &str, topic: &str, qos: u8, payload: &[u8]) {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.mqtt.to_string(), "-i", client_id, "-q", &qos.to_string(), "-t", topic, "-s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(payload)?;
                child.wait_with_output()
            })
            .expect("mosquitto_pub must be installed (scripts/services.sh installs mosquitto-clients)");
        assert!(out.status.success(), "mosquitto_pub -q {qos} -t {topic}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for MqttNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The next `msg` frame (other frames, e.g. pings, are skipped); it must be on `channel`.
fn next_msg(client: &mut crate::common::Client, channel: &str) -> serde_json::Value {
    for _ in 0..50 {
        let frame = recv_json(client);
        if frame["op"] == "msg" {
            assert_eq!(frame["ch"], channel, "{frame}");
            return frame;
        }
    }
    panic!("no msg on {channel}");
}

#[test]
fn devices_publish_over_mqtt_with_qos_0_and_1_and_dashboards_receive_every_reading() {
    let nats = MqttNats::start();
    let prefix = format!("mq{}", unique());
    let gateway = Gateway::start(&["--nats", &format!("nats://127.0.0.1:{}", nats.port), "--nats-prefix", &prefix]);
    // One dashboard follows one device, another every device (wildcard).
    let (mut device_view, _) = connect(&gateway.url(""));
    let (mut fleet_view, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut device_view, json!({"op": "sub", "ch": "tele.dev1"}), 1)["op"], "ok");
    assert_eq!(request(&mut fleet_view, json!({"op": "sub", "ch": "tele.*"}), 1)["op"], "ok");

    // Topic `{prefix}/tele/dev1` is NATS subject `{prefix}.tele.dev1`, channel `tele.dev1`.
    let topic = format!("{prefix}/tele/dev1");
    nats.publish("dev1-q0", &topic, 0, br#"{"t":21.5,"seq":1}"#);
    for view in [&mut device_view, &mut fleet_view] {
        assert_eq!(next_msg(view, "tele.dev1")["data"], json!({"t": 21.5, "seq": 1}), "QoS 0 reading");
    }
    nats.publish("dev1-q1", &topic, 1, br#"{"t":21.7,"seq":2}"#);
    for view in [&mut device_view, &mut fleet_view] {
        assert_eq!(next_msg(view, "tele.dev1")["data"], json!({"t": 21.7, "seq": 2}), "QoS 1 reading");
    }
    // A payload that is not JSON arrives base64-encoded (PROTOCOL.md, non-JSON payloads).
    nats.publish("dev2-q1", &format!("{prefix}/tele/dev2"), 1, b"\x01\x02raw");
    assert_eq!(next_msg(&mut fleet_view, "tele.dev2")["data"], json!({"b64": "AQJyYXc="}));
    // The first dashboard did not subscribe to dev2: its next frame is dev1's next reading.
    nats.publish("dev1-q1b", &topic, 1, br#"{"seq":3}"#);
    assert_eq!(next_msg(&mut device_view, "tele.dev1")["data"], json!({"seq": 3}));
}
