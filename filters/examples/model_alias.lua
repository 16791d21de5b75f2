-- Per-team model aliasing: a team asks for an alias ("fast", "smart") and gets the model its
-- table names. settings.vars = { team_1 = { fast = "chat-b" }, default = { fast = "chat-a" } }
function pre_route(req)
  local teams = wharf.vars or {}
  local map = teams[req.team_id or ""] or teams.default
  if map and map[req.model] then
    req.model = map[req.model]
  end
end
