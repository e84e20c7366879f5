-- Argo CD health check for palisade.dev/AgentSandbox (argocd-cm key
-- resource.customizations.health.palisade.dev_AgentSandbox). Plain Lua 5.1: no libraries
-- beyond what Argo CD opens for health scripts.
local hs = { status = "Progressing", message = "waiting for the Palisade operator to report status" }
if obj.status == nil then
  return hs
end
local st = obj.status
local generation = obj.metadata.generation
if generation ~= nil and st.observedGeneration ~= generation then
  hs.message = "waiting for the Palisade operator to observe generation " .. tostring(generation)
  return hs
end
local ready, reconciling, stalled
for _, c in ipairs(st.conditions or {}) do
  if c.type == "Ready" then ready = c end
  if c.type == "Reconciling" then reconciling = c end
  if c.type == "Stalled" then stalled = c end
end
local function text(c)
  local m = st.message or ""
  if c ~= nil and c.message ~= nil and c.message ~= "" then m = c.message end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then return c.reason .. ": " .. m end
  return m
end
-- Blocked, Failed and Expired sandboxes need a person: Degraded.
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled)
  return hs
end
-- Paused on purpose (spec.paused): no pod, workspace kept.
if st.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = text(ready)
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = text(reconciling)
  return hs
end
-- Running, or the agent finished successfully.
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready)
  return hs
end
hs.message = text(ready)
return hs
