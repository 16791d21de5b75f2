-- Header injection: every upstream request carries the team and a fixed tenant header.
-- Reads `wharf.vars.tenant` (settings.vars.tenant in the TOML), default "wharf".
function pre_upstream(req)
  req.headers["x-wharf-team"] = req.team_id or "none"
  req.headers["x-tenant"] = (wharf.vars and wharf.vars.tenant) or "wharf"
end
