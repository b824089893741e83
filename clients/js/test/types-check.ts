// Compiled (not run) by the unit tests: a typical application against ringcast.d.ts.
import ringcast, { connect, type Json, type RingcastError } from "..";

const client = connect("https://rt.example.com", {
  token: async () => "jwt",
  backoffMaxMs: 10_000,
  onNotify: async (data: Json, meta) => {
    console.log(meta.nid, meta.ts, data);
  },
});
const sub = client.subscribe("room.lobby", (data, meta) => {
  const seq: number | undefined = meta.seq;
  console.log(meta.channel, seq, data);
}, {
  presence: true,
  since: 41,
  onJoin: (change) => console.log(change.user, change.conn),
  onResync: (error: RingcastError) => console.log(error.code),
});
client.publish("room.lobby", { text: "hi", n: [1, 2, 3] }).catch((e: RingcastError) => console.log(e.code));
client.presence("room.lobby").then((members) => members.map((m) => m.user));
const off = client.on("stateChange", (state) => {
  const s: "idle" | "connecting" | "open" | "reconnecting" | "closed" = state;
  console.log(s);
});
off();
sub.unsubscribe();
client.close();
const again: ringcast.Client = new ringcast.Client(undefined, { transports: ["longpoll"] });
void again.connect();
// @ts-expect-error: data must be JSON
client.publish("x", () => 1);
