// ES module entry of ringcast.js: the same client (ringcast.js is the one implementation).
import ringcast from "./ringcast.js";

export const {
  VERSION,
  DEFAULTS,
  connect,
  Client,
  Subscription,
  RingcastError,
  backoffDelay,
  matches,
  endpoints,
  BoundedSet,
} = ringcast;
export default ringcast;
