-- nack: record a failed attempt on a pending entry I own, by setting its delivery
-- count, so attempts survive a restart or a handoff. Fenced by the owner token.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] owner key
-- ARGV:   [1] token  [2] group  [3] consumer  [4] entry id  [5] attempts so far
-- Reply:  {"OK"} | {"FENCED"} (nothing changed)
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'FENCED'} end
redis.call('XCLAIM', KEYS[1], ARGV[2], ARGV[3], 0, ARGV[4], 'RETRYCOUNT', ARGV[5], 'JUSTID')
return {'OK'}
