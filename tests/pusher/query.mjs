// The Pusher HTTP API's channel queries and terminate_connections through the real npm
// libraries: pusher-js 8 connects to node A, the npm `pusher` server library asks node B
// (cluster-wide answers). Driven by tests/it/pusher_query.rs; prints one JSON object.
//
//   node query.mjs '{"a":PORT_A,"b":PORT_B,"appId":"..","key":"..","secret":"..","prefix":".."}'
import PusherClient from "pusher-js";
import { cfg, connected, server, sleep, subscribed, within } from "./common.mjs";

const out = {};
const serverB = server(cfg.b);

const client = (port, extra = {}) =>
  new PusherClient(cfg.key, {
    wsHost: "127.0.0.1", wsPort: port, forceTLS: false, enabledTransports: ["ws"], disableStats: true, cluster: "mt1",
    channelAuthorization: { customHandler: ({ socketId, channelName }, callback) => callback(null, serverB.authorizeChannel(socketId, channelName)) },
    ...extra,
  });

// GET through the library: its status and parsed body (the library throws on non-2xx).
const get = async (path, params) => {
  try {
    const response = await serverB.get({ path, params });
    return { status: response.status, body: await response.json() };
  } catch (e) {
    return { status: e.status, body: e.body };
  }
};

const p = cfg.prefix;
const user = `u-${p}`;
const a = client(cfg.a, { userAuthentication: { customHandler: ({ socketId }, callback) => {
  callback(null, serverB.authenticateUser(socketId, { id: user }));
} } });
const bystander = client(cfg.a);
try {
  await connected(a);
  await connected(bystander);
  await subscribed(a, `q-${p}-one`);
  await subscribed(a, `private-q-${p}-two`);
  await subscribed(bystander, `q-${p}-one`);

  out.channels = await get("/channels", { filter_by_prefix: `q-${p}` });
  out.private_channels = await get("/channels", { filter_by_prefix: `private-q-${p}` });
  out.channel = await get(`/channels/q-${p}-one`, { info: "subscription_count" });
  out.vacant = await get(`/channels/q-${p}-none`, { info: "subscription_count" });
  out.user_count_refused = await get("/channels", { filter_by_prefix: `q-${p}`, info: "user_count" });

  // Sign in, then terminate the user's connections through node B.
  const errors = [];
  a.connection.bind("error", (e) => errors.push(e.error?.data?.code ?? e.data?.code ?? null));
  a.signin();
  await within(5000, "signed in", a.user.signinDonePromise);
  const disconnected = within(5000, "terminated", new Promise((resolve) => {
    a.connection.bind("state_change", ({ current }) => { if (current === "disconnected" || current === "failed") resolve(current); });
  }));
  const terminated = await serverB.terminateUserConnections(user);
  out.terminate_status = terminated.status;
  out.terminate_body = await terminated.json();
  out.terminated_state = await disconnected;
  out.terminated_codes = errors;
  await sleep(300);
  out.bystander_state = bystander.connection.state;
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e.stack ?? e);
}
a.disconnect();
bystander.disconnect();
console.log(JSON.stringify(out));
process.exit(0);
