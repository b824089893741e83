"""The PyPI `pusher` server library against ringcast (driven by tests/it/pusher.rs).

    python server_lib.py auth   '{"port":..,"appId":..,"key":..,"secret":..,"socket":..,"channel":..}'
    python server_lib.py events '{"port":..,"appId":..,"key":..,"secret":..,"channel":..}'

Prints one JSON object: channel auth signatures (`auth`), or the answers to trigger,
trigger_batch and a trigger signed with a wrong secret (`events`).
"""
import json
import sys

import pusher


def client(cfg, secret=None):
    return pusher.Pusher(app_id=cfg["appId"], key=cfg["key"], secret=secret or cfg["secret"], host="127.0.0.1", port=cfg["port"], ssl=False)


def main():
    mode, cfg = sys.argv[1], json.loads(sys.argv[2])
    out = {}
    if mode == "auth":
        p = client(cfg)
        out["private"] = p.authenticate(channel=cfg["channel"], socket_id=cfg["socket"])
        # The library writes channel_data with spaces: the server must verify the raw string.
        out["presence"] = p.authenticate(channel="presence-" + cfg["channel"], socket_id=cfg["socket"], custom_data={"user_id": "py-1", "user_info": {"name": "Py"}})
    elif mode == "events":
        p = client(cfg)
        out["trigger"] = p.trigger(cfg["channel"], "py-event", {"from": "python"})
        out["batch"] = p.trigger_batch([{"channel": cfg["channel"], "name": "py-batch", "data": {"n": 1}}, {"channel": cfg["channel"], "name": "py-batch", "data": {"n": 2}}])
        try:
            client(cfg, secret="not-the-secret-at-all").trigger(cfg["channel"], "py-event", {})
            out["bad_secret"] = "accepted"
        except pusher.errors.PusherBadAuth as e:
            out["bad_secret"] = "401: " + str(e)
    print(json.dumps(out))


main()
