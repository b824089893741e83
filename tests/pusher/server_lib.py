"""The PyPI `pusher` server library against ringcast (driven by tests/it/pusher.rs).

    python server_lib.py auth   '{"port":..,"appId":..,"key":..,"secret":..,"socket":..,"channel":..}'
    python server_lib.py events '{"port":..,"appId":..,"key":..,"secret":..,"channel":..}'
    python server_lib.py query  '{"port":..,"appId":..,"key":..,"secret":..,"channel":..,"prefix":..,"user":..}'

Prints one JSON object: channel auth signatures (`auth`), the answers to trigger,
trigger_batch and a trigger signed with a wrong secret (`events`), or the answers to
channels_info, channel_info, users_info (on a channel that is not presence: refused) and
terminate_user_connections (`query`; each answer or "STATUS: error").
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
    elif mode == "query":
        p = client(cfg)

        def answer(call):
            try:
                return call()
            except pusher.errors.PusherBadRequest as e:
                return "400: " + str(e)
            except pusher.errors.PusherBadAuth as e:
                return "401: " + str(e)
            except pusher.errors.PusherBadStatus as e:
                return str(e)

        out["channels"] = answer(lambda: p.channels_info(prefix_filter=cfg["prefix"]))
        out["channel"] = answer(lambda: p.channel_info(cfg["channel"], ["subscription_count"]))
        out["user_count_refused"] = answer(lambda: p.channel_info(cfg["channel"], ["user_count"]))
        out["users_refused"] = answer(lambda: p.users_info(cfg["channel"]))
        out["terminate"] = answer(lambda: p.terminate_user_connections(cfg["user"]))
        out["bad_secret"] = answer(lambda: client(cfg, secret="not-the-secret-at-all").channels_info())
    print(json.dumps(out))


main()
