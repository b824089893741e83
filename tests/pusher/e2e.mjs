// The real Pusher ecosystem against ringcast: pusher-js 8 (its Node bundle carries its own
// WebSocket client), Laravel Echo on top of it, and the npm `pusher` server library for
// channel auth and the HTTP API. Driven by tests/it/pusher.rs, which starts two gateway
// nodes on one NATS and checks what this prints: one JSON object of observations.
//
//   node e2e.mjs '{"a":PORT_A,"b":PORT_B,"appId":"..","key":"..","secret":"..","prefix":".."}'
import PusherClient from "pusher-js";
import { cfg, connected, server, sleep, subscribed, within } from "./common.mjs";
import Echo from "laravel-echo";

const out = {};
const serverB = server(cfg.b);

// Channel auth signed by the server library, as an app's /broadcasting/auth would; a
// presence channel's auth carries the member (`member`: {user_id, user_info}).
const channelAuthorization = (secret, member) => ({
  customHandler: ({ socketId, channelName }, callback) => {
    try {
      const presence = channelName.startsWith("presence-") ? member : undefined;
      callback(null, server(cfg.b, secret).authorizeChannel(socketId, channelName, presence));
    } catch (e) {
      callback(e, null);
    }
  },
});

const client = (port, options = {}) =>
  new PusherClient(options.key ?? cfg.key, {
    wsHost: "127.0.0.1", wsPort: port, forceTLS: false, enabledTransports: ["ws"], disableStats: true, cluster: "mt1",
    channelAuthorization: channelAuthorization(options.secret ?? cfg.secret, options.member), ...options.extra,
  });

const next = (channel, event, ms = 5000) =>
  within(ms, `event ${event} on ${channel.name}`, new Promise((resolve) => channel.bind(event, (data, meta) => resolve({ data, meta }))));

const p = cfg.prefix;
const a = client(cfg.a);
const c = client(cfg.b);
try {
  out.socket_a = await connected(a);
  out.socket_c = await connected(c);

  // Public and private channels on node A; events triggered through node B's HTTP API.
  const pub = await subscribed(a, `pub-${p}`);
  const priv = await subscribed(a, `private-${p}`);
  const gotPub = next(pub, "evt");
  const gotPriv = next(priv, "evt");
  await serverB.trigger([`pub-${p}`, `private-${p}`], "evt", { n: 1, text: "héllo" });
  out.public_event = (await gotPub).data;
  out.private_event = (await gotPriv).data;

  // A bad channel signature is a subscription_error with status 401.
  const bad = client(cfg.a, { secret: "wrong-secret-value" });
  await connected(bad);
  out.bad_auth = await within(5000, "subscription_error", new Promise((resolve) => {
    const channel = bad.subscribe(`private-bad-${p}`);
    channel.bind("pusher:subscription_error", (e) => resolve(e));
    channel.bind("pusher:subscription_succeeded", () => resolve({ unexpected: "succeeded" }));
  }));
  bad.disconnect();

  // socket_id exclusion: A triggers "as itself"; C (node B) gets it, A does not.
  const pubC = await subscribed(c, `pub-${p}`);
  let aGotExcluded = false;
  pub.bind("evt2", () => { aGotExcluded = true; });
  const cGot = next(pubC, "evt2");
  await serverB.trigger(`pub-${p}`, "evt2", { n: 2 }, { socket_id: out.socket_a });
  out.excluded_event_other = (await cGot).data;
  await sleep(300);
  out.excluded_event_self = aGotExcluded;

  // Client events: C on node B hears A's client-typing; A does not hear its own.
  const privC = await subscribed(c, `private-${p}`);
  let aEcho = false;
  priv.bind("client-typing", () => { aEcho = true; });
  const cTyping = next(privC, "client-typing");
  out.client_event_sent = priv.trigger("client-typing", { who: "a" });
  out.client_event = (await cTyping).data;
  await sleep(300);
  out.client_event_echo = aEcho;

  // Laravel Echo over pusher-js, on node B.
  const echo = new Echo({ broadcaster: "pusher", Pusher: PusherClient, key: cfg.key, wsHost: "127.0.0.1", wsPort: cfg.b, forceTLS: false, enabledTransports: ["ws"], disableStats: true, cluster: "mt1" });
  const echoGot = within(5000, "echo event", new Promise((resolve) => echo.channel(`orders-${p}`).listen(".OrderShipped", (e) => resolve(e))));
  await within(5000, "echo subscribed", new Promise((resolve) => echo.connector.pusher.channel(`orders-${p}`).bind("pusher:subscription_succeeded", resolve)));
  await server(cfg.a).trigger(`orders-${p}`, "OrderShipped", { order: 42 });
  out.echo_event = await echoGot;
  echo.disconnect();

  // User sign-in (signed by the server library) and sendToUser through node A.
  const user = client(cfg.b, { extra: { userAuthentication: { customHandler: ({ socketId }, callback) => {
    callback(null, serverB.authenticateUser(socketId, { id: `u-${p}`, user_info: { name: "Ada" } }));
  } } } });
  await connected(user);
  const toUser = within(5000, "event sent to the user", new Promise((resolve) => user.user.bind("hello", (data) => resolve(data))));
  user.signin();
  await within(5000, "signed in", user.user.signinDonePromise);
  // pusher-js subscribes to #server-to-user-{id} after signin_success; wait for it.
  await within(5000, "user channel", new Promise((resolve) => {
    const check = () => (user.user.serverToUserChannel?.subscribed ? resolve() : setTimeout(check, 20));
    check();
  }));
  await server(cfg.a).sendToUser(`u-${p}`, "hello", { to: "ada" });
  out.user_event = await toUser;
  user.disconnect();

  // Presence across the two nodes: members are users, member_added/removed fire on a
  // user's first and last socket, with user_info; Laravel Echo's join() sees the list.
  const ann = client(cfg.a, { member: { user_id: `ann-${p}`, user_info: { name: "Ann" } } });
  const bob = client(cfg.b, { member: { user_id: `bob-${p}`, user_info: { name: "Bob" } } });
  await connected(ann);
  await connected(bob);
  const room = `presence-room-${p}`;
  const annRoom = await subscribed(ann, room);
  out.presence_first = { count: annRoom.members.count, me: annRoom.members.me };
  const bobAdded = next(annRoom, "pusher:member_added");
  const bobRoom = await subscribed(bob, room);
  out.presence_second = { count: bobRoom.members.count, me: bobRoom.members.me?.id, ids: Object.keys(bobRoom.members.members).sort() };
  out.member_added = (await bobAdded).data;
  const echoP = new Echo({
    broadcaster: "pusher", Pusher: PusherClient, key: cfg.key, wsHost: "127.0.0.1", wsPort: cfg.a, forceTLS: false,
    enabledTransports: ["ws"], disableStats: true, cluster: "mt1",
    channelAuthorization: channelAuthorization(cfg.secret, { user_id: `cat-${p}`, user_info: { name: "Cat" } }),
  });
  const catJoined = next(bobRoom, "pusher:member_added");
  out.echo_here = await within(5000, "echo here()", new Promise((resolve) => echoP.join(`room-${p}`).here((users) => resolve(users))));
  out.member_added_cat = (await catJoined).data;
  // A client event on a presence channel carries the sender's user_id.
  const typing = next(bobRoom, "client-typing");
  annRoom.trigger("client-typing", { who: "ann" });
  out.presence_client_event = (await typing).meta ?? null;
  const catLeft = next(annRoom, "pusher:member_removed");
  echoP.disconnect();
  out.member_removed = (await catLeft).data;
  ann.disconnect();
  bob.disconnect();

  // A wrong secret on the HTTP API is a 401.
  try {
    await server(cfg.b, "wrong-secret-value").trigger(`pub-${p}`, "evt", {});
    out.bad_api_status = 200;
  } catch (e) {
    out.bad_api_status = e.status;
  }

  // An unknown app key: pusher:error 4001, then the close (pusher-js stops: 4000-4099).
  const stranger = client(cfg.a, { key: "no-such-key" });
  out.unknown_key = await within(5000, "unknown key error", new Promise((resolve) => {
    stranger.connection.bind("error", (e) => resolve(e.error?.data ?? e.data ?? e));
  }));
  stranger.disconnect();
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e.stack ?? e);
}
a.disconnect();
c.disconnect();
console.log(JSON.stringify(out));
process.exit(0);
