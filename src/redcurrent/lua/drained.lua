-- drained: read-only; has a group drained one partition up to its growth barrier?
-- Any member may ask about any partition: lifting the gate is the owner's, in fetch.
-- Slot:   {topic:partition}
-- KEYS:   [1] partition stream  [2] the group's gate key  [3] the partition's barrier hash
-- ARGV:   [1] group
-- Reply:  {"OPEN"}            no gate: never set, or lifted
--         {"DRAINED", gate}   delivered up to the barrier id, nothing at or below it pending
--         {"WAIT", gate}      not yet
--         {"WAIT"}            the partition has a barrier and the group does not exist on
--                             it yet: the claim that creates it sets its gate
local gate = redis.call('GET', KEYS[2])
if not gate then
  if redis.call('EXISTS', KEYS[3]) == 1 and not gate_state(KEYS[1], ARGV[1], '0-0') then return {'WAIT'} end
  return {'OPEN'}
end
local _, drained = gate_state(KEYS[1], ARGV[1], gate)
if drained then return {'DRAINED', gate} end
return {'WAIT', gate}
