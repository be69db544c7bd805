-- _prelude: not a script. scripts.py puts this text in front of every script it loads,
-- so the helpers below exist once. Keep it to local functions: it runs on every call.

-- The text of an error caught by pcall(redis.call, ...): Redis 7+ raises a table
-- {err = "..."}, Redis 6.2 the string itself.
local function error_text(e) return tostring(e and e.err or e) end

-- Where `group` stands on `stream` against a growth's barrier id `gate` (docs/architecture.md
-- §10): its last-delivered id (nil: no such group or stream), and whether it is drained:
-- nothing at or below the barrier is left to deliver, and nothing at or below it is pending.
local function gate_state(stream, group, gate)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then return nil, false end
  for _, g in ipairs(groups) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == group then
      if #redis.call('XRANGE', stream, '(' .. last, gate, 'COUNT', 1) > 0 then return last, false end
      return last, #redis.call('XPENDING', stream, group, '-', gate, 1) == 0
    end
  end
  return nil, false
end
