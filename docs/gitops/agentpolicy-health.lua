-- Argo CD health check for palisade.dev/AgentPolicy (argocd-cm key
-- resource.customizations.health.palisade.dev_AgentPolicy). Plain Lua 5.1: no libraries
-- beyond what Argo CD opens for health scripts.
local hs = { status = "Progressing", message = "waiting for the Palisade operator to check the policy" }
if obj.status == nil then
  return hs
end
local st = obj.status
local generation = obj.metadata.generation
if generation ~= nil and st.observedGeneration ~= generation then
  hs.message = "waiting for the Palisade operator to check generation " .. tostring(generation)
  return hs
end
for _, c in ipairs(st.conditions or {}) do
  -- An invalid policy stays invalid until someone edits it; its sandboxes are blocked.
  local invalid = (c.type == "Stalled" and c.status == "True")
    or (c.type == "Accepted" and c.status == "False")
  if invalid then
    hs.status = "Degraded"
    hs.message = (c.reason or "Invalid") .. ": " .. (c.message or "")
    return hs
  end
end
for _, c in ipairs(st.conditions or {}) do
  if c.type == "Ready" and c.status == "True" then
    hs.status = "Healthy"
    hs.message = c.message or "the policy is valid"
    return hs
  end
end
return hs
