-- _prelude: not a script. scripts.py puts this text in front of every script it loads,
-- so the helpers below exist once. Keep it to local functions: it runs on every call.

-- The text of an error caught by pcall(redis.call, ...): Redis 7+ raises a table
-- {err = "..."}, Redis 6.2 the string itself.
local function error_text(e) return tostring(e and e.err or e) end
