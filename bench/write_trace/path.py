"""The critical path of each traced write (see drive.py), hop by hop, as medians in us.

    python3 bench/write_trace/path.py OUT leader,leader2,follower,follower2

For each write: the contact member's reader wakes, the leader proposes and takes the Ready, the
append reaches the follower whose acknowledgement completed the quorum, that follower syncs and
acknowledges, the leader commits and applies, (via a follower: the commit reaches the contact,
which applies), the contact replies. The leader's own sync runs beside the follower's round
trip; its duration and the slack it leaves are printed in parentheses."""
import json, sys, bisect, statistics, collections
d = sys.argv[1]
res = json.load(open(d + "/drive.json"))
pids = res["pids"]; states = res["states"]
lead = states.index("leader") + 1
per = {}
for i, pid in enumerate(pids):
    sid = i + 1
    evs = [(int(t), n) for t, n in (l.split() for l in open(f"{d}/trace.{pid}"))]
    evs.sort()
    per[sid] = ([e[0] for e in evs], [e[1] for e in evs])

def first(sid, name, after, before=None):
    ts, ns = per[sid]
    i = bisect.bisect_left(ts, after)
    while i < len(ts) and (before is None or ts[i] <= before):
        if ns[i] == name or (name.endswith("*") and ns[i].startswith(name[:-1])):
            return ts[i], ns[i]
        i += 1
    return None, None

def last(sid, name, before, after):
    ts, ns = per[sid]
    i = bisect.bisect_right(ts, before) - 1
    while i >= 0 and ts[i] >= after:
        if ns[i] == name or (name.endswith("*") and ns[i].startswith(name[:-1])):
            return ts[i], ns[i]
        i -= 1
    return None, None

for phase in sys.argv[2].split(","):
    ph = res["phases"][phase]
    c = ph["member"] + 1
    segs = collections.defaultdict(list)
    skipped = 0
    for a, b in ph["lat"]:
        try:
            pts = []
            t, _ = first(c, "c_recv", a, b); pts.append(("client send -> contact reader wakes (c_recv)", t))
            t, _ = first(c, "c_submit", t); pts.append(("decode request -> submit", t))
            if c != lead:
                t, _ = first(c, "fwd_send", t); pts.append(("follower: queue forward -> forward task runs", t))
                t, _ = first(c, "wire_out*", t); pts.append(("forward -> peer socket send", t))
                t, _ = first(lead, "fwd_recv", t); pts.append(("loopback + leader peer reader wakes, decode fwd", t))
            t, _ = first(lead, "propose", t); pts.append(("leader: submit -> core.propose", t))
            tprop = t
            t, _ = first(lead, "ready", t); pts.append(("leader: log loop wakes, takes Ready", t))
            tready = t
            tapply, _ = first(lead, "apply", tready, b)
            tr1, _ = last(lead, "ready", tapply, tready)
            tack, _ = last(lead, "recv_APPEND_RESP", tr1, tready)
            _, win = last(lead, "wire_in_*", tack, tready)
            f = int(win.rsplit("_", 1)[1])
            lgo, _ = first(lead, "sync_go", tready); lback, _ = first(lead, "sync_back", lgo)
            wo, _ = first(lead, f"wire_out_{f}", tready)
            pts.append(("leader: Ready -> append on the wire to acking follower", wo))
            t, _ = first(f, "wire_in_*", wo); pts.append(("loopback + follower peer reader wakes", t))
            t, _ = first(f, "ready", t); pts.append(("follower: step + log loop wakes, takes Ready", t))
            t, _ = first(f, "sync_go", t); pts.append(("follower: write entries to log", t))
            fgo = t
            t, _ = first(f, "sync_back", t); pts.append(("follower: fsync (+thread hand-off if any)", t))
            th, _ = first(f, "thr_start", fgo, t)
            segs["  (follower sync went to thread)"].append(1 if th else 0)
            t, _ = first(f, "wire_out_*", t); pts.append(("follower: ack -> peer sender task sends it", t))
            t2, _ = first(lead, "wire_in_*", t); pts.append(("loopback + leader peer reader wakes", t2))
            assert abs(t2 - tack) < 200_000 or True
            pts.append(("leader: step ack -> log loop wakes, takes Ready", tr1))
            if lback > tr1:
                raise ValueError("leader sync after commit ready?")
            if c != lead:
                t, _ = first(lead, f"wire_out_{c}", tr1); pts.append(("leader: Ready -> commit append on the wire to contact", t))
                t, _ = first(c, "wire_in_*", t); pts.append(("loopback + contact peer reader wakes", t))
                t, _ = first(c, "apply", t); pts.append(("contact: step + log loop + Ready -> apply", t))
            else:
                t = tapply
            t, _ = first(c, "c_applied_cb", t); pts.append(("apply (tree) -> reply callback", t))
            t, _ = first(c, "c_send", t); pts.append(("client sender task wakes, encodes, send", t))
            pts.append(("socket -> client has reply", b))
            prev = a
            for name, t in pts:
                if t is None or t < prev:
                    raise ValueError(name)
                segs[name].append((t - prev) / 1000); prev = t
            segs["  (leader own sync: sync_go -> sync_back)"].append((lback - lgo) / 1000)
            segs["  (leader sync done before ack processed, us of slack)"].append((tr1 - lback) / 1000)
            segs["TOTAL"].append((b - a) / 1000)
        except (ValueError, TypeError, AttributeError, IndexError) as e:
            skipped += 1
    n = len(segs["TOTAL"])
    print(f"== {phase} (contact member {c}, leader {lead}): {n} writes traced, {skipped} skipped")
    tot = 0
    for name, v in segs.items():
        m = statistics.median(v)
        if not name.startswith(" ") and name != "TOTAL":
            tot += m
        print(f"  {name:60s} {m:8.1f}")
    print(f"  {'sum of segment medians':60s} {tot:8.1f}")
