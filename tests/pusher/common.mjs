// What tests/pusher's scripts share: the config the Rust test passes as argv[2]
// ({"a":PORT_A,"b":PORT_B,"appId","key","secret","prefix"}), bounded waits, the npm
// `pusher` server library pointed at a node, and pusher-js's connect/subscribe promises.
import PusherServer from "pusher";

export const cfg = JSON.parse(process.argv[2]);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const within = (ms, what, promise) =>
  Promise.race([promise, sleep(ms).then(() => { throw new Error(`timed out after ${ms} ms: ${what}`); })]);

export const server = (port, secret = cfg.secret) =>
  new PusherServer({ appId: cfg.appId, key: cfg.key, secret, host: "127.0.0.1", port: String(port), useTLS: false });

export const connected = (pusher) =>
  within(5000, "connected", new Promise((resolve, reject) => {
    if (pusher.connection.state === "connected") return resolve(pusher.connection.socket_id);
    pusher.connection.bind("connected", () => resolve(pusher.connection.socket_id));
    pusher.connection.bind("error", (e) => reject(new Error(JSON.stringify(e))));
  }));

export const subscribed = (pusher, name) =>
  within(5000, `subscribed ${name}`, new Promise((resolve, reject) => {
    const channel = pusher.subscribe(name);
    channel.bind("pusher:subscription_succeeded", () => resolve(channel));
    channel.bind("pusher:subscription_error", (e) => reject(new Error(`subscription_error ${JSON.stringify(e)}`)));
  }));
