#!/usr/bin/env python3
"""Writes the rule-engine benchmark inputs: the same N rules as a ferry rule
set and as a Lua module, and E events as JSON lines (the MQTT payloads).

usage: gen.py OUTDIR [RULES=50] [EVENTS=1000000]
"""
import json
import random
import sys

out = sys.argv[1]
n_rules = int(sys.argv[2]) if len(sys.argv) > 2 else 50
n_events = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
rng = random.Random(7)

ferry, lua = [], ["local R = {}"]
for i in range(n_rules):
    field = f"v{i % 10}"
    thr = 90 + (i % 9)
    if i % 2 == 0:
        # threshold rule
        ferry.append(f'RULE r{i} ON {field} > {thr} THEN alert("r{i}")')
        lua.append(f'R[{i + 1}] = function(e) local x = e.{field}; if x ~= nil and x > {thr} then return "r{i}" end end')
    else:
        # equality + threshold rule
        kind = f"k{i % 8}"
        ferry.append(f'RULE r{i} ON kind == "{kind}" and {field} <= {100 - thr} THEN alert("r{i}")')
        lua.append(
            f'R[{i + 1}] = function(e) local x = e.{field}; '
            f'if e.kind == "{kind}" and x ~= nil and x <= {100 - thr} then return "r{i}" end end'
        )
lua.append("return R")
with open(f"{out}/bench.rules", "w") as f:
    f.write("\n".join(ferry) + "\n")
with open(f"{out}/bench_rules.lua", "w") as f:
    f.write("\n".join(lua) + "\n")
with open(f"{out}/events.jsonl", "w") as f:
    for i in range(n_events):
        e = {"id": i, "kind": f"k{rng.randrange(8)}"}
        for j in range(10):
            e[f"v{j}"] = round(rng.uniform(0, 100), 2)
        f.write(json.dumps(e, separators=(",", ":")) + "\n")
