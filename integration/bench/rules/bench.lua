-- LuaJIT side of the rule-engine benchmark: the same rules, compiled once
-- to Lua functions. Mode "predecoded": events are pre-built tables (decoded
-- before timing). Mode "pipeline": each JSON line is decoded with lua-cjson,
-- evaluated, and the actions' messages collected.
local dir, mode = arg[1], arg[2]
package.path = dir .. "/?.lua;" .. package.path
local R = require("bench_rules")
local n = #R
local cjson = require("cjson")

local lines = {}
for line in io.lines(dir .. "/events.jsonl") do lines[#lines + 1] = line end

local fired = 0
local t0, t1
if mode == "predecoded" then
  local events = {}
  for i = 1, #lines do events[i] = cjson.decode(lines[i]) end
  t0 = os.clock()
  for i = 1, #events do
    local e = events[i]
    for j = 1, n do
      if R[j](e) then fired = fired + 1 end
    end
  end
  t1 = os.clock()
else
  local out = {}
  t0 = os.clock()
  for i = 1, #lines do
    local e = cjson.decode(lines[i])
    for j = 1, n do
      local a = R[j](e)
      if a then fired = fired + 1; out[#out + 1] = a end
    end
    if #out > 4096 then out = {} end
  end
  t1 = os.clock()
end
print(string.format('{"events": %d, "rules": %d, "fired": %d, "seconds": %.6f}', #lines, n, fired, t1 - t0))
